"""Users' own SQL on the store, safely: one read-only query, no files, no extensions, no other databases.

Two layers. First DuckDB's own parser classifies the text (:func:`check_user_sql`): exactly one statement,
and only a query (``SELECT``, ``WITH``, ``FROM``-first, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``, ``EXPLAIN``);
anything that writes, attaches another database, installs or loads an extension, changes a setting or calls a
pragma is refused with a message that says which kind of statement it was. Then the query runs on a read-only
connection with DuckDB's external access switched off and the configuration locked, so even a query that
passes the parser cannot read or write a file (``read_csv('/etc/passwd')``, ``glob``, ``COPY``) or switch
that off again: DuckDB refuses and capml reports it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import duckdb
import pandas as pd

from capml_core.errors import InvalidInputError
from capml_core.store.database import Store

#: Statement types a user query may have (DESCRIBE, SHOW, SUMMARIZE and FROM-first queries parse as SELECT).
ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")

_WHY = {
    "INSERT": "it writes",
    "UPDATE": "it writes",
    "DELETE": "it writes",
    "CREATE": "it writes (creates an object)",
    "DROP": "it writes (drops an object)",
    "ALTER": "it writes (alters an object)",
    "COPY": "it reads or writes files",
    "EXPORT": "it writes files",
    "ATTACH": "it attaches another database",
    "DETACH": "it detaches a database",
    "LOAD": "it installs or loads an extension",
    "SET": "it changes a setting",
    "VARIABLE_SET": "it changes a setting",
    "PRAGMA": "pragmas can change settings",
    "CALL": "it calls a table function outside a query",
    "TRANSACTION": "it controls transactions",
    "VACUUM": "it writes",
    "UPDATE_EXTENSIONS": "it installs extensions",
    "MULTI": "DuckDB runs it as several statements (a PIVOT without an IN list creates a type first); "
    "name the pivoted values: PIVOT t ON col IN ('a', 'b') USING count(*)",
}


class QueryRefused(InvalidInputError):
    """A user's SQL that capml does not run (it writes, reads files, loads extensions, ...)."""


def check_user_sql(sql: str) -> None:
    """Refuse anything but a single read-only query (see the module doc).

    Raises
    ------
    QueryRefused
        Empty text, several statements, or a statement of another kind (the message names the kind and why).
    InvalidInputError
        SQL that does not parse (DuckDB's message).
    """
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise InvalidInputError(f"SQL error: {err}") from err
    if not statements:
        raise QueryRefused("empty query: give one SELECT statement")
    if len(statements) > 1:
        raise QueryRefused(f"{len(statements)} statements: give one query at a time")
    kind = statements[0].type.name
    if kind not in ALLOWED_STATEMENTS:
        why = _WHY.get(kind, "only queries are allowed")
        raise QueryRefused(
            f"{kind} statement refused: {why}. The store is read-only here; allowed: SELECT (also WITH, FROM ..., "
            "DESCRIBE, SHOW, SUMMARIZE) and EXPLAIN"
        )


#: Seconds a user's query may run before it is stopped (DuckDB interrupts it).
DEFAULT_TIMEOUT_S = 60.0
#: Rows fetched from DuckDB at a time while streaming or counting.
CHUNK_ROWS = 8192


@dataclass(frozen=True)
class QueryPreview:
    """The first rows of a query's result and how many rows it has in all."""

    frame: pd.DataFrame
    n_rows: int

    @property
    def n_left_out(self) -> int:
        """Rows of the result not in ``frame``."""
        return self.n_rows - len(self.frame)


@contextmanager
def _user_query(store, sql: str, timeout_s: float | None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A sandboxed connection whose queries are interrupted after ``timeout_s``; DuckDB errors made readable."""
    check_user_sql(sql)
    with store.read(sandboxed=True) as con:  # waits for a writer, checks the schema version
        timer = threading.Timer(timeout_s, con.interrupt) if timeout_s else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            yield con
        except duckdb.InterruptException as err:
            raise QueryTimeout(
                f"query stopped after {timeout_s:g} s, its time limit (capml sql --timeout S): narrow it (WHERE, "
                "LIMIT) or allow longer"
            ) from err
        except duckdb.PermissionException as err:
            raise QueryRefused(f"refused: the query reaches outside the store ({err})") from err
        except duckdb.Error as err:
            raise InvalidInputError(f"SQL error: {err}") from err
        finally:
            if timer is not None:
                timer.cancel()


class QueryTimeout(InvalidInputError):
    """A user's query ran longer than its time limit and was stopped."""


def run_user_query(
    store: Store,
    sql: str,
    *,
    max_rows: int | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> pd.DataFrame:
    """Run a user's read-only query on the store (checked, then sandboxed); at most ``max_rows`` rows.

    Raises
    ------
    QueryRefused
        The query is not a single read-only query, or it tried to reach files or extensions.
    QueryTimeout
        It ran longer than ``timeout_s`` seconds (None: no limit).
    NotComputedError
        No store yet.
    InvalidInputError
        The SQL is wrong (DuckDB's message).
    """
    with _user_query(store, sql, timeout_s) as con:
        result = con.execute(sql)
        frame = result.fetch_df_chunk(-(-max_rows // 2048)) if max_rows else result.df()  # 2048-row vectors
    return frame.head(max_rows) if max_rows else frame


def preview_user_query(
    store: Store,
    sql: str,
    *,
    max_rows: int,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> QueryPreview:
    """The first ``max_rows`` rows of a user's query and the number of rows in all (counted, not kept)."""
    with _user_query(store, sql, timeout_s) as con:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        first = result.fetchmany(max_rows) if max_rows > 0 else []
        n_rows = len(first)
        while chunk := result.fetchmany(CHUNK_ROWS):
            n_rows += len(chunk)
    return QueryPreview(pd.DataFrame.from_records(first, columns=columns), n_rows)


def stream_user_query(
    store: Store,
    sql: str,
    write: Callable[[pd.DataFrame, bool], None],
    *,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
) -> int:
    """Run a user's query and hand its rows to ``write(chunk, first)`` chunk by chunk; returns the row count.

    Memory stays at one chunk (:data:`CHUNK_ROWS` rows) whatever the size of the result.
    """
    n_rows = 0
    with _user_query(store, sql, timeout_s) as con:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        first = True
        while True:
            chunk = result.fetchmany(CHUNK_ROWS)
            if not chunk and not first:
                break
            write(pd.DataFrame.from_records(chunk, columns=columns), first)
            n_rows += len(chunk)
            first = False
            if not chunk:
                break
    return n_rows

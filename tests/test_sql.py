"""Users' SQL: read-only queries run; writes, attachments, extensions, settings and file access are refused."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from capml_core.store.database import Store
from capml_core.store.sql import QueryRefused, check_user_sql, run_user_query


def _digest(project: Path) -> str:
    return hashlib.sha256((project / "capml.duckdb").read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("INSERT INTO levels VALUES ('x', 'y', 'z', NULL)", "INSERT statement refused: it writes"),
        ("UPDATE labels SET gap_ev = 0", "UPDATE statement refused: it writes"),
        ("DELETE FROM labels", "DELETE statement refused: it writes"),
        ("CREATE TABLE mine AS SELECT 1", "CREATE statement refused"),
        ("DROP TABLE labels", "DROP statement refused"),
        ("ATTACH '/tmp/other.duckdb' AS other", "ATTACH statement refused: it attaches another database"),
        ("COPY labels TO '/tmp/labels.csv'", "COPY statement refused: it reads or writes files"),
        ("INSTALL httpfs", "LOAD statement refused: it installs or loads an extension"),
        ("LOAD httpfs", "LOAD statement refused: it installs or loads an extension"),
        ("SET enable_external_access = true", "SET statement refused: it changes a setting"),
        ("PRAGMA enable_profiling", "PRAGMA statement refused"),
        ("SELECT 1; DROP TABLE labels", "2 statements: give one query at a time"),
        ("PIVOT labels ON level USING count(*)", "MULTI statement refused: .* name the pivoted values"),
        ("   ", "empty query"),
    ],
)
def test_statements_that_are_not_queries_are_refused(sql: str, message: str) -> None:
    with pytest.raises(QueryRefused, match=message):
        check_user_sql(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM glob('/etc/*')",
        "SELECT * FROM read_text('/etc/hostname')",
        "SELECT * FROM read_blob('{project}/../neighbour.txt')",
        "SELECT * FROM read_parquet('{project}/../elsewhere.parquet')",
    ],
)
def test_queries_that_reach_files_are_refused_and_change_nothing(demo_store_copy: Path, sql: str) -> None:
    before = _digest(demo_store_copy)
    with pytest.raises(QueryRefused, match="reaches outside the store"):
        run_user_query(Store(demo_store_copy), sql.format(project=demo_store_copy))
    assert _digest(demo_store_copy) == before


def test_read_only_queries_run(demo_store_copy: Path) -> None:
    store = Store(demo_store_copy)
    tables = run_user_query(store, "SHOW TABLES")
    assert {"labels", "structures", "gap_thermal", "labelled_structures"} <= set(tables["name"])
    counts = run_user_query(store, "FROM labelled_structures SELECT level, count(*) AS n GROUP BY level ORDER BY level")
    assert dict(zip(counts["level"], counts["n"], strict=True)) == {"gpaw-gllbsc": 48, "gpaw-pbesol": 103}
    assert len(run_user_query(store, "DESCRIBE labels")) > 5
    assert len(run_user_query(store, "EXPLAIN SELECT * FROM labels")) >= 1
    assert len(run_user_query(store, "SELECT * FROM labelled_structures", max_rows=10)) == 10
    pivot = run_user_query(
        store, "PIVOT (SELECT level FROM labels) ON level IN ('gpaw-pbesol', 'gpaw-gllbsc') USING count(*)"
    )
    assert pivot.iloc[0].to_dict() == {"gpaw-pbesol": 103, "gpaw-gllbsc": 48}  # the advice of the refusal works
    with pytest.raises(Exception, match="SQL error"):
        run_user_query(store, "SELECT * FROM no_such_table")


def test_cli_sql_uses_the_same_guard(demo_store_copy: Path) -> None:
    from typer.testing import CliRunner

    from flows.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["sql", "DELETE FROM labels", "-p", str(demo_store_copy)])
    assert refused.exit_code == 2 and "DELETE statement refused" in refused.output
    files = runner.invoke(app, ["sql", "SELECT * FROM read_csv('/etc/passwd')", "-p", str(demo_store_copy)])
    assert files.exit_code == 2 and "reaches outside the store" in files.output
    ok = runner.invoke(app, ["sql", "SELECT count(*) AS n FROM labels", "-p", str(demo_store_copy), "--output", "csv"])
    assert ok.exit_code == 0 and ok.output.strip().splitlines() == ["n", "151"]
    none = runner.invoke(app, ["sql", "SELECT level, gap_ev FROM labels WHERE false", "-p", str(demo_store_copy)])
    assert none.exit_code == 0 and none.output.strip() == "no rows (level, gap_ev)"  # not pandas' repr


def test_dashboard_sql_page_runs_examples_and_refuses_writes(demo_store_copy: Path, monkeypatch) -> None:
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("CAPML_PROJECT_DIR", str(demo_store_copy))
    at = AppTest.from_function(_sql_page, default_timeout=60).run()
    assert not at.exception and not at.dataframe  # nothing runs before the button
    at.selectbox[0].select("Labelled structures per level and composition").run()
    at.button[0].click().run()
    assert not at.exception and len(at.dataframe[0].value) > 0
    before = _digest(demo_store_copy)
    at.text_area[0].input("DROP TABLE labels").run()
    at.button[0].click().run()
    assert "Refused: DROP statement refused" in at.error[0].value
    assert _digest(demo_store_copy) == before


def _sql_page() -> None:
    from dashboard.views.sql import render_sql

    render_sql()

"""Results as tables for people: one rendering per result, shown by the CLI, logged by the flows, read by reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ResultTable:
    """A titled table of text cells; ``warnings`` are the rows that report a problem, ``notes`` lines after it.

    The CLI prints it as a table, the Prefect flows log :meth:`lines` (rows in ``warnings`` at warning level).
    """

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    warnings: frozenset[int] = frozenset()
    notes: tuple[str, ...] = ()

    def lines(self) -> list[tuple[bool, str]]:
        """One (is_warning, text) per row, ``title: column value, ...``, then the notes."""
        out = [
            (
                i in self.warnings,
                f"{self.title}: " + ", ".join(f"{c} {v}" for c, v in zip(self.columns, row, strict=True)),
            )
            for i, row in enumerate(self.rows)
        ]
        return out + [(False, f"{self.title}: {note}") for note in self.notes]


def table(
    title: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    warnings: Sequence[int] = (),
    notes: Sequence[str] = (),
) -> ResultTable:
    """A :class:`ResultTable` from lists."""
    return ResultTable(title, tuple(columns), tuple(tuple(r) for r in rows), frozenset(warnings), tuple(notes))

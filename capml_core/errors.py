"""Exceptions raised by capml (modelled on ASE's calculator errors)."""

from __future__ import annotations


class CapmlError(Exception):
    """Base class of every error capml raises on purpose."""


class InvalidInputError(CapmlError, ValueError):
    """A file, field or value given by the user is not acceptable; nothing was written."""


class ConfigError(InvalidInputError):
    """A run configuration file is unreadable or has a field with a value that is not allowed."""


class DatasetError(InvalidInputError):
    """A labelled dataset file was rejected; the store is unchanged."""


class StoreError(CapmlError):
    """The results store cannot be opened, migrated or written."""


class StoreLockedError(StoreError):
    """Another process held the store's lock longer than the wait allowed."""


class CalculationFailed(CapmlError):
    """A calculation (DFT, MLIP, MD, ...) did not finish or did not converge."""


class NotComputedError(CapmlError):
    """A result was requested whose producing step has not run yet (the message says which)."""


class SitesLeftError(InvalidInputError):
    """An MD trajectory's mean positions are not the sites of the reference cell (distortion, diffusion, order).

    Attributes: ``atom`` (index), ``offset_a`` (Å, mean distance from its site), ``limit_a`` (Å).
    """

    def __init__(self, message: str, *, atom: int, offset_a: float, limit_a: float):
        super().__init__(message)
        self.atom = atom
        self.offset_a = offset_a
        self.limit_a = limit_a

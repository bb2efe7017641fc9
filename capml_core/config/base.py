"""What every config section shares: the base model (no unknown keys), name and element types, input paths."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from ase.data import chemical_symbols
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


LEVEL_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"


Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=64)]


LevelName = Annotated[str, Field(pattern=LEVEL_PATTERN, max_length=64)]


Temperature = Annotated[float, Field(ge=0.0, le=5000.0)]


def _element(symbol: str) -> str:
    if symbol not in chemical_symbols[1:]:
        raise ValueError(f"{symbol!r} is not a chemical element symbol (e.g. 'Ag', 'Br', 'I')")
    return symbol


Element = Annotated[str, AfterValidator(_element)]


class Section(BaseModel):
    """Base of every configuration section: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _input_path(value: Path | None, info: ValidationInfo) -> Path | None:
    """Resolve an input path against the config file's directory and check that it exists."""
    if value is None:
        return None
    base_dir = (info.context or {}).get("base_dir")
    path = Path(value).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise ValueError(f"file not found: {path}")
    return path

"""Load a run configuration from TOML, apply --set overrides, and explain what is wrong."""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from pydantic import (
    BaseModel,
    ValidationError,
)

from capml_core.config.schema import RunConfig
from capml_core.errors import ConfigError, InvalidInputError
from capml_core.system.structures import sublattice_site_count


# ------------------------------------------------------------------------------------------- loading
@dataclass(frozen=True)
class LoadedConfig:
    """A validated configuration with where it came from.

    Attributes
    ----------
    config
        The validated model.
    path
        Absolute path of the TOML file.
    config_hash
        SHA-256 (hex) of the file's parsed content (canonical JSON), independent of where it lives.
    project_dir
        Absolute output directory of the run (store and artifacts).
    """

    config: RunConfig
    path: Path
    config_hash: str
    project_dir: Path


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a parsed TOML document with ``{"section.field": value}`` overrides set (validated later).

    Raises
    ------
    ConfigError
        A key that does not name a field inside a section (``md.workers``, ``gaps.device``, ...).
    """
    out = json.loads(json.dumps(raw, default=str))
    for key, value in overrides.items():
        parts = key.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"overrides: key {key!r} must be 'section.field' (e.g. 'md.workers')")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"overrides: key {key!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return out


def load_config(
    path: str | Path, *, project_dir: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> LoadedConfig:
    """Load and validate a run configuration from a TOML file.

    Parameters
    ----------
    path
        The TOML file.
    project_dir
        Overrides ``run.project_dir`` (relative to the current working directory).
    overrides
        ``{"section.field": value}`` set on top of the file (e.g. a deployment's stage options); validated
        with the file, and part of the config hash.

    Raises
    ------
    ConfigError
        One message naming the file, each bad field, its value and what is allowed. Nothing is written.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        text = path.read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {toml_error_message(text, err)}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a UTF-8 text file: {err}") from err
    if overrides:
        raw = apply_overrides(raw, overrides)
    try:
        config = RunConfig.model_validate(raw, context={"base_dir": path.parent})
    except ValidationError as err:
        raise ConfigError(format_validation_error(path, err, raw, overrides=overrides)) from err
    _check_system_consistency(path, config)
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    out = Path(project_dir) if project_dir is not None else config.run.project_dir or Path("runs") / config.run.name
    return LoadedConfig(
        config=config,
        path=path,
        config_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        project_dir=out.expanduser().resolve(),
    )


def _check_system_consistency(path: Path, config: RunConfig) -> None:
    """Checks that need the parent structure: sublattice present, compositions realisable."""
    system = config.system
    try:
        parent = system.parent.build()
    except InvalidInputError as err:
        raise ConfigError(f"{path}: field 'system.parent.file' = '{system.parent.file}': {err}") from err
    symbols = sorted(set(parent.get_chemical_symbols()))
    if system.sublattice.site_species not in symbols:
        raise ConfigError(
            f"{path}: field 'system.sublattice.site_species' = {system.sublattice.site_species!r}: "
            f"not in the parent structure; allowed: {', '.join(symbols)}"
        )
    unknown = sorted(set(config.dataset.force_constants) - set(system.sublattice.species))
    if unknown:
        raise ConfigError(
            f"{path}: field 'dataset.force_constants' has key(s) {unknown}: force constants belong to the end "
            f"members; allowed keys: {', '.join(system.sublattice.species)}"
        )
    n_sites = sublattice_site_count(parent, system.sublattice.site_species, system.supercell)
    bad = [x for x in system.compositions if not math.isclose(x * n_sites, round(x * n_sites), abs_tol=1e-6)]
    if bad:
        allowed = ", ".join(f"{k}/{n_sites}" for k in range(n_sites + 1))
        raise ConfigError(
            f"{path}: field 'system.compositions' = {bad}: not realisable on the {n_sites} sublattice sites "
            f"of the {'x'.join(map(str, system.supercell))} supercell; allowed: multiples of 1/{n_sites} "
            f"({allowed})"
        )


_TOML_POSITION = re.compile(r"\(at line (\d+), column (\d+)\)$")


_TOML_UNCLOSED = ("Unclosed array", "Unclosed inline table", "Expected ']'", "Expected '}'", "Expected ','")


def _open_brackets(text: str, end: int) -> list[tuple[str, int, int]]:
    """Brackets ``[``/``{`` opened before offset ``end`` and not yet closed: (bracket, line, column), 1-based.

    Strings (basic, literal, multi-line) and comments are skipped.
    """
    stack: list[tuple[str, int, int]] = []
    line, column, i = 1, 1, 0
    while i < min(end, len(text)):
        char = text[i]
        if char in "\"'":
            quote = text[i : i + 3] if text[i : i + 3] in ('"""', "'''") else char
            j = i + len(quote)
            while j < len(text) and not text.startswith(quote, j):
                if len(quote) == 1 and text[j] == "\n":
                    break  # an unclosed one-line string ends at the line's end
                j += 2 if (text[j] == "\\" and quote[0] == '"') else 1
            else:
                j += len(quote)
            j = min(j, len(text))
        elif char == "#":
            j = text.find("\n", i)
            j = len(text) if j < 0 else j
        else:
            if char in "[{":
                stack.append((char, line, column))
            elif char in "]}" and stack:
                stack.pop()
            j = i + 1
        for skipped in text[i:j]:
            line, column = (line + 1, 1) if skipped == "\n" else (line, column + 1)
        i = j
    return stack


def toml_error_message(text: str, err: Exception) -> str:
    """Tomllib's message, pointing at the opening bracket when an array, inline table or header is unclosed.

    tomllib reports where it gave up, which for an unclosed ``[`` is the next line or later.
    """
    message = str(err)
    found = _TOML_POSITION.search(message)
    if not found or not message.startswith(_TOML_UNCLOSED):
        return message
    line, column = int(found.group(1)), int(found.group(2))
    lines = text.split("\n")
    offset = sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
    stack = _open_brackets(text, offset)
    if not stack:
        return message
    bracket, open_line, open_column = stack[-1]
    closing = "]" if bracket == "[" else "}"
    return (
        f"{message.removesuffix(found.group(0)).strip()}: the {bracket!r} opened at line {open_line}, column "
        f"{open_column} is not closed with {closing!r} (parsing stopped at line {line}, column {column})"
    )


def format_validation_error(
    path: Path | str,
    err: ValidationError,
    raw: dict[str, Any],
    *,
    model: type[BaseModel] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> str:
    """One readable message from a pydantic error: file, dotted field, value given, what is allowed.

    ``model`` is the model that was validated (default: :class:`RunConfig`); ``raw`` the input it got;
    ``overrides`` the ``section.field`` values set on top of the file (``--set``): a bad one is named as such.
    """
    root = model or RunConfig
    problems = [_problem(root, item, raw) for item in err.errors(include_url=False)]

    def from_override(field: str) -> str | None:
        return next((key for key in overrides or {} if field == key or field.startswith((key + ".", key + "["))), None)

    keys = [from_override(field) for field, _ in problems]
    if keys and all(keys):
        lines = [f"--set (on top of {path}): {err.error_count()} invalid value(s)"]
    else:
        lines = [f"{path}: {err.error_count()} invalid field(s)"]
    for (field, text), key in zip(problems, keys, strict=True):
        if key is None:
            lines.append(f"  field '{field}'{text}")
        else:
            lines.append(f"  --set {key}={overrides[key]!r}: field '{field}'{text}")
    return "\n".join(lines)


def _problem(root: type[BaseModel], item: Mapping[str, Any], raw: dict[str, Any]) -> tuple[str, str]:
    """(dotted field, the rest of its line: ' = value: what is wrong') of one pydantic error."""
    loc = item["loc"]
    field = _dotted(loc)
    if item["type"] == "extra_forbidden":
        return field, f": unknown key; allowed keys here: {', '.join(_allowed_keys(root, loc[:-1]))}"
    if item["type"] == "missing":
        return field, ": required but missing"
    value = item.get("input")
    message = item["msg"].removeprefix("Value error, ")
    # model-level checks start their message with the field they concern: "<field>: ..."
    head, sep, rest = message.partition(": ")
    here = _value_at(raw, loc)
    first = head.split(".")[0].split("[")[0]
    if sep and (first in _allowed_keys(root, loc) or (isinstance(here, dict) and first in here)):
        loc, message = (*loc, *_undotted(head)), rest
        field, value = _dotted(loc), _value_at(raw, loc)
    shown = "{...}" if isinstance(value, dict) and len(str(value)) > 80 else repr(value)
    return field, f" = {shown}: {message}"


def _value_at(raw: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


def _undotted(field: str) -> tuple[Any, ...]:
    """``a.b[2].c`` -> ("a", "b", 2, "c"): the inverse of :func:`_dotted`."""
    parts: list[Any] = []
    for name in field.split("."):
        base, *indexes = name.replace("]", "").split("[")
        parts.append(base)
        parts += [int(i) for i in indexes if i.isdigit()]
    return tuple(parts)


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "<top level>"


def _allowed_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at a location of a model tree (best effort)."""
    model: Any = root
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *get_args(annotation)]
        for arg in list(candidates):
            candidates.extend(get_args(arg))
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields)

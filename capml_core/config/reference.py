"""Configuration reference generated from the pydantic models of :mod:`capml_core.config.schema`.

:func:`config_reference_markdown` walks :class:`~capml_core.config.schema.RunConfig` and every section model it
reaches, generically (no section or field name is written here): a field whose type is a model is a TOML table
(``[system.parent]``), a list of models an array of tables (``[[dataset.sets]]``), a dict of models one table
per key (``[name.<key>]``); every other field is a row of its table's reference with a readable type (constraints
included), its default (or "required") and its description. A section or field added to a model in
``capml_core/config/`` appears after regenerating.

Command line::

    python -m capml_core.config.reference docs/configuration-reference.md           # (re)write the file
    python -m capml_core.config.reference --check docs/configuration-reference.md   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import math
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from capml_core.config import schema as config_module
from capml_core.config.schema import RunConfig

#: Where the generated reference lives in the repository.
DEFAULT_OUTPUT = "docs/configuration-reference.md"
#: The command that regenerates it (printed in the file's header and by ``--check``).
REGENERATE_COMMAND = f"python -m capml_core.config.reference {DEFAULT_OUTPUT}"

_SEQUENCE_ORIGINS = (list, tuple, set, frozenset, Sequence)
_BASE_NAMES: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", Any: "any", type(None): "none"}


# ------------------------------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class TableRef:
    """One TOML table of the configuration: its header, its model and the field that holds it.

    Attributes
    ----------
    header
        TOML header, e.g. ``[system.parent]`` or ``[[dataset.sets]]``; empty for the root model.
    model
        The pydantic model of the table.
    depth
        0 for the root model, 1 for its sections, 2 for theirs, ...
    """

    header: str
    model: type[BaseModel]
    depth: int


def _model_in(annotation: Any) -> tuple[str, type[BaseModel]] | None:
    """How a field's type holds a model: ("table" | "array" | "dict", model), or None for a plain value."""
    annotation = _strip_annotated(annotation)
    if _is_model(annotation):
        return "table", annotation
    origin = get_origin(annotation)
    args = [a for a in (_strip_annotated(a) for a in get_args(annotation)) if a is not type(None)]
    if origin in (Union, types.UnionType) and len(args) == 1:
        return _model_in(args[0])
    if origin in _SEQUENCE_ORIGINS and args and _is_model(args[0]):
        return "array", args[0]
    if origin is dict and len(args) == 2 and _is_model(args[1]):
        return "dict", args[1]
    return None


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _strip_annotated(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def iter_tables(root: type[BaseModel] = RunConfig) -> Iterator[TableRef]:
    """Every TOML table reachable from ``root``, depth first in field order (the root first, header "")."""

    def walk(model: type[BaseModel], dotted: str, header: str, depth: int) -> Iterator[TableRef]:
        yield TableRef(header, model, depth)
        for name, field in model.model_fields.items():
            held = _model_in(field.annotation)
            if held is None:
                continue
            kind, sub = held
            path = f"{dotted}.{name}" if dotted else name
            if kind == "table":
                yield from walk(sub, path, f"[{path}]", depth + 1)
            elif kind == "array":
                yield from walk(sub, path, f"[[{path}]]", depth + 1)
            else:
                yield from walk(sub, f"{path}.<key>", f"[{path}.<key>]", depth + 1)

    yield from walk(root, "", "", 0)


# -------------------------------------------------------------------------------------------------- types
def _constraints(metadata: Sequence[Any]) -> tuple[list[Any], list[tuple[str, str]]]:
    """Flatten pydantic/annotated-types metadata: (constraint objects, [(validator name, its function)])."""
    flat: list[Any] = []
    validators: list[tuple[str, str]] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            sub, names = _constraints(item.metadata)
            flat += sub
            validators += names
        elif callable(getattr(item, "func", None)):  # AfterValidator, BeforeValidator, ...
            func = item.func
            validators.append((func.__name__.lstrip("_") or func.__name__, f"{func.__module__}.{func.__qualname__}"))
        else:
            flat.append(item)
    return flat, validators


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _apply(base: str, python_type: Any, constraints: Sequence[Any]) -> str:
    """``base`` with its constraints: ``int ≥ 1``, ``0 ≤ float ≤ 1``, ``list[float], ≥ 1 item``, ..."""
    lower = upper = None
    notes: list[str] = []
    for item in constraints:
        for attr, symbol in (("gt", ">"), ("ge", "≥")):
            if getattr(item, attr, None) is not None:
                value = getattr(item, attr)
                if python_type is int and symbol == ">":
                    value, symbol = value + 1, "≥"
                lower = (symbol, _number(value))
        for attr, symbol in (("lt", "<"), ("le", "≤")):
            if getattr(item, attr, None) is not None:
                value = getattr(item, attr)
                if python_type is int and symbol == "<":
                    value, symbol = value - 1, "≤"
                upper = (symbol, _number(value))
        if getattr(item, "multiple_of", None) is not None:
            notes.append(f"multiple of {_number(item.multiple_of)}")
        unit = "character" if python_type is str else "item"
        for attr, symbol in (("min_length", "≥"), ("max_length", "≤")):
            if (count := getattr(item, attr, None)) is not None:
                notes.append(f"{symbol} {count} {unit}{'' if count == 1 else 's'}")
        if getattr(item, "pattern", None) is not None:
            notes.append(f"regex {item.pattern}")
    if lower and upper:
        text = f"{lower[1]} {lower[0].replace('>', '<').replace('≥', '≤')} {base} {upper[0]} {upper[1]}"
    elif lower:
        text = f"{base} {lower[0]} {lower[1]}"
    elif upper:
        text = f"{base} {upper[0]} {upper[1]}"
    else:
        text = base
    return ", ".join([text, *notes])


def render_type(annotation: Any, metadata: Sequence[Any] = (), validators: dict[str, str] | None = None) -> str:
    """A readable type: ``float``, ``list[float]``, ``"a" | "b"``, ``int ≥ 1``, ``dict[element, path]``.

    ``metadata`` holds the field's own constraints (pydantic moves a field's outer ``Annotated`` there);
    validators met are added to ``validators`` (type name, e.g. ``element`` -> the function that checks it).
    """
    metadata = list(metadata)
    while get_origin(annotation) is Annotated:
        annotation, *extra = get_args(annotation)
        metadata += extra
    constraints, names = _constraints(metadata)
    if validators is not None:
        validators.update(names)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        return " | ".join(render_type(a, metadata, validators) for a in kept) or "none"
    if origin is Literal:
        return " | ".join(json.dumps(v.value if isinstance(v, enum.Enum) else v) for v in args)
    if origin is dict:
        key, value = (render_type(a, (), validators) for a in args) if args else ("any", "any")
        return _apply(f"dict[{key}, {value}]", dict, constraints)
    if origin in _SEQUENCE_ORIGINS:
        if origin is tuple and args and args[-1] is not Ellipsis:
            inner = ", ".join(render_type(a, (), validators) for a in args)
            return _apply(f"tuple[{inner}]", tuple, constraints)
        inner = render_type(args[0], (), validators) if args else "any"
        name = "list" if origin in (list, Sequence) or (origin is tuple) else origin.__name__
        return _apply(f"{name}[{inner}]", list, constraints)
    if _is_model(annotation):
        return "table"
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return " | ".join(json.dumps(member.value) for member in annotation)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        base = "path"
    else:
        base = _BASE_NAMES.get(annotation, getattr(annotation, "__name__", str(annotation)))
    if names:  # a value checked by a named validator (e.g. a chemical element): name the type after it
        base = names[-1][0]
    return _apply(base, annotation, constraints)


# ----------------------------------------------------------------------------------------------- defaults
def toml_value(value: Any) -> str:
    """``value`` written as TOML (strings quoted, ``true``/``false``, arrays, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return toml_value(value.value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str | PurePath):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, BaseModel):
        return toml_value(value.model_dump(mode="json", exclude_none=True))
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items() if v is not None)
        return "{ " + ", ".join(items) + " }"
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value, default=str)


def _toml_key(key: Any) -> str:
    key = key.value if isinstance(key, enum.Enum) else str(key)
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _default(field: FieldInfo) -> str:
    """Markdown of a field's default: ``required``, ``unset`` (None: leave the key out) or the TOML value."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        try:
            value = field.default_factory()  # type: ignore[call-arg]
        except TypeError:  # a factory that takes the validated data
            return "computed"
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    return _code(toml_value(value))


# --------------------------------------------------------------------------------------------- Markdown
def _rst_to_markdown(text: str) -> str:
    """Docstring markup to Markdown: ``x`` -> `x`; :role:`~a.b` -> `b`; :role:`a.b` -> `a.b`."""
    text = re.sub(r":[a-z]+:`~[\w.]*?\.?(\w+)`", r"`\1`", text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def _escape_html(text: str) -> str:
    """``<`` outside code spans as ``&lt;``: Markdown renderers would take ``<name>`` for an HTML tag."""
    parts = re.split(r"(`+[^`]*?`+)", text)
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;") for part in parts)


def _docstring(obj: Any) -> str:
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return _escape_html(_rst_to_markdown(inspect.cleandoc(doc))) if doc else ""


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell: one line, pipes escaped."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    fence = "``" if "`" in text else "`"
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _field_row(name: str, field: FieldInfo, table: str, validators: dict[str, str]) -> str:
    held = _model_in(field.annotation)
    key = field.alias or name
    if held is None:
        kind = _code(render_type(field.annotation, field.metadata, validators))
        default = _default(field)
    else:
        child = f"{table}.{key}" if table else key
        header = {"table": f"[{child}]", "array": f"[[{child}]]", "dict": f"[{child}.<key>]"}[held[0]]
        kind = {"table": "table", "array": "array of tables", "dict": "tables, one per key"}[held[0]]
        kind = f"{kind} {_code(header)}"
        default = "its fields' defaults" if held[0] == "table" and not field.is_required() else _default(field)
    description = _escape_html(_rst_to_markdown(field.description or ""))
    return "| " + " | ".join([_code(key), _cell(kind), _cell(default), _cell(description)]) + " |"


def config_reference_markdown(root: type[BaseModel] = RunConfig) -> str:
    """The configuration reference as Markdown, generated from ``root`` (default: the whole run configuration).

    One heading per TOML table (``[run]``, ``[system.parent]``, ``[[dataset.sets]]``, ...), the model's
    docstring, then a table of its fields: key, type, default and description.
    """
    tables = list(iter_tables(root))
    validators: dict[str, str] = {}
    body: list[str] = []
    for ref in tables:
        dotted = ref.header.strip("[]")
        if ref.depth == 0:
            rows = [n for n, f in ref.model.model_fields.items() if _model_in(f.annotation) is None]
            if not rows:
                continue
            body += ["## Top level (keys before any table header)", ""]
        else:
            body += [f"{'#' * min(1 + ref.depth, 6)} {_code(ref.header)}", ""]
            doc = _docstring(ref.model)
            if doc:
                body += [doc, ""]
        body += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in ref.model.model_fields.items():
            body.append(_field_row(name, field, dotted, validators))
        body.append("")

    lines = [
        f"<!-- Generated from the models in capml_core/config/ by `{REGENERATE_COMMAND}`: do not edit by hand. -->",
        "",
        "# Configuration reference",
        "",
        f"Generated from the pydantic models in `capml_core/config/` (`{root.__name__}` and every section it "
        f"holds); do not edit this file. After changing a model, regenerate it with `{REGENERATE_COMMAND}` "
        f"(`python -m capml_core.config.reference --check {DEFAULT_OUTPUT}` tells whether it is current). "
        "A guided tour of the sections: [configuration.md](configuration.md).",
        "",
    ]
    module_doc = _docstring(config_module) if root is RunConfig else _docstring(root)
    if module_doc:
        lines += [module_doc, ""]
    lines += [
        'How to read the tables: *type* `int ≥ 1` or `0 ≤ float ≤ 1` states the allowed range, `"a" | "b"` '
        "the allowed strings, `tuple[...]` a TOML array of that length, `dict[k, v]` an inline table "
        "(`{ k = v }`) or a sub-table, `path` a file path; *default* `required` means the key must be given, "
        "`unset` that leaving the key out means none (TOML has no null). "
        + (
            "Types named after a validator: "
            + ", ".join(f"`{name}` (a value checked by `{func}`)" for name, func in sorted(validators.items()))
            + "."
            if validators
            else ""
        ),
        "",
        "Tables: " + ", ".join(_code(ref.header) for ref in tables if ref.depth > 0) + ".",
        "",
        *body,
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    """Write the reference to a file, check that a file is current (``--check``), or print it.

    Returns
    -------
    int
        0 on success; 1 when ``--check`` finds the file missing or different from the generated text.
    """
    parser = argparse.ArgumentParser(
        prog="python -m capml_core.config.reference",
        description="Generate the configuration reference (Markdown) from capml's pydantic config models.",
    )
    parser.add_argument("output", nargs="?", type=Path, help=f"file to write (e.g. {DEFAULT_OUTPUT}); none: stdout")
    parser.add_argument("--check", action="store_true", help="only compare OUTPUT with the generated text")
    args = parser.parse_args(argv)
    text = config_reference_markdown()
    if args.output is None:
        if args.check:
            parser.error("--check needs the file to compare, e.g. " + DEFAULT_OUTPUT)
        sys.stdout.write(text)
        return 0
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else None
        if current != text:
            print(
                f"{args.output} is out of date: run python -m capml_core.config.reference {args.output}",
                file=sys.stderr,
            )
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

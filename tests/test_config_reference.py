"""The configuration reference is generated from the pydantic models and the committed copy is current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal, get_args, get_origin

import pytest
from pydantic import BaseModel, Field, PositiveFloat

from capml_core.config.base import Section
from capml_core.config.reference import REGENERATE_COMMAND, config_reference_markdown, main
from capml_core.config.schema import RunConfig
from tests.conftest import REPO

COMMITTED = REPO / "docs" / "configuration-reference.md"


@pytest.fixture(scope="module")
def generated() -> str:
    return config_reference_markdown()


def _models_in(annotation: object) -> list[tuple[str, type[BaseModel]]]:
    """(kind, model) of every model a field type holds: written independently of the generator's walk."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [("table", annotation)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _models_in(args[0])
    found = []
    for arg in args:
        for kind, model in _models_in(arg):
            found.append(("array" if origin in (list, tuple) and kind == "table" else kind, model))
    return found


def _tables(model: type[BaseModel], dotted: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(TOML header, model) of every table reachable from ``model``."""
    out = []
    for name, field in model.model_fields.items():
        for kind, sub in _models_in(field.annotation):
            path = f"{dotted}.{name}" if dotted else name
            out.append((f"[[{path}]]" if kind == "array" else f"[{path}]", sub))
            out += _tables(sub, path)
    return out


def _section(text: str, header: str) -> str:
    """The Markdown between the heading of ``header`` and the next heading."""
    match = re.search(rf"^#+ `{re.escape(header)}`\n(.*?)(?=^#+ |\Z)", text, flags=re.M | re.S)
    assert match, f"no heading for {header}"
    return match.group(1)


def _row(section: str, key: str) -> list[str]:
    """Cells of the table row of ``key`` (pipes inside cells are escaped as \\|)."""
    for line in section.splitlines():
        if line.startswith(f"| `{key}` |"):
            return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
    raise AssertionError(f"no row for {key!r} in:\n{section}")


def test_committed_reference_is_current(generated: str) -> None:
    assert COMMITTED.is_file(), f"docs/configuration-reference.md is missing: run {REGENERATE_COMMAND}"
    assert COMMITTED.read_text(encoding="utf-8") == generated, (
        f"docs/configuration-reference.md is out of date: run {REGENERATE_COMMAND}"
    )


def test_header_says_generated_and_how(generated: str) -> None:
    first = generated.splitlines()[0]
    assert "Generated" in first and REGENERATE_COMMAND in first


def test_every_table_and_field_of_every_section_appears(generated: str) -> None:
    tables = _tables(RunConfig)
    headers = [h for h, _ in tables]
    assert {"[run]", "[system]", "[system.parent]", "[[dataset.sets]]", "[[dataset.imports]]", "[gaps]"} <= set(headers)
    for header, model in tables:
        section = _section(generated, header)
        assert model.model_fields, header
        for name in model.model_fields:
            _row(section, name)  # raises if the field has no row in its table


def test_rows_are_well_formed_markdown(generated: str) -> None:
    rows = [line for line in generated.splitlines() if line.startswith("|")]
    assert rows
    for line in rows:
        assert len(re.split(r"(?<!\\)\|", line)) == 6, line  # 4 cells: key, type, default, description


def test_defaults_types_and_descriptions(generated: str) -> None:
    cutoff = _row(_section(generated, "[gnn]"), "cutoff_a")
    assert cutoff == ["`cutoff_a`", "`float > 0`", "`5.5`", "Graph cutoff radius (Å)."]
    assert _row(_section(generated, "[run]"), "name")[2] == "required"
    assert _row(_section(generated, "[reference]"), "workers")[1:3] == ["`int ≥ 1`", "`1`"]
    assert _row(_section(generated, "[system]"), "compositions")[1] == "`list[0 ≤ float ≤ 1]`"
    assert _row(_section(generated, "[system]"), "supercell")[2] == "`[2, 2, 2]`"
    assert _row(_section(generated, "[md]"), "save_every_steps")[1] == "`1 ≤ int ≤ 1000`"
    assert _row(_section(generated, "[gaps]"), "reference_compositions")[2] == "unset"
    assert _row(_section(generated, "[mlip]"), "pair_repulsion")[2] == "`false`"
    assert _row(_section(generated, "[dataset]"), "sets")[1] == "array of tables `[[dataset.sets]]`"
    assert _row(_section(generated, "[system.sublattice]"), "species")[1] == "`tuple[element, element]`"
    # the model's docstring follows its heading
    assert "Identity of the run and where its results go." in _section(generated, "[run]")


def test_literals_render_their_allowed_values(generated: str) -> None:
    assert _row(_section(generated, "[disorder]"), "relax")[1:3] == ['`"cell" \\| "full"`', '`"cell"`']
    allowed = get_args(RunConfig.model_fields["gnn"].annotation.model_fields["architecture"].annotation)
    assert len(allowed) > 2
    expected = "`" + " \\| ".join(f'"{a}"' for a in allowed) + "`"
    assert _row(_section(generated, "[gnn]"), "architecture")[1] == expected


def test_a_new_section_and_field_appear_without_code_change() -> None:
    class Extra(Section):
        """A section added later."""

        speed_thz: PositiveFloat = Field(default=1.5, description="A new field.")
        mode: Literal["fast", "slow"] = "fast"

    class Extended(RunConfig):
        extra: Extra = Extra()

    text = config_reference_markdown(Extended)
    section = _section(text, "[extra]")
    assert "A section added later." in section
    assert _row(section, "speed_thz") == ["`speed_thz`", "`float > 0`", "`1.5`", "A new field."]
    assert _row(section, "mode")[1] == '`"fast" \\| "slow"`'


def test_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str], generated: str) -> None:
    target = tmp_path / "reference.md"
    assert main(["--check", str(target)]) == 1  # missing
    assert f"{target} is out of date: run python -m capml_core.config.reference {target}" in capsys.readouterr().err
    assert main([str(target)]) == 0
    assert target.read_text(encoding="utf-8") == generated
    assert main(["--check", str(target)]) == 0
    target.write_text(generated.replace("5.5", "6.0"), encoding="utf-8")
    assert main(["--check", str(target)]) == 1


def test_command_line_check_of_the_committed_file_without_prefect_or_streamlit() -> None:
    code = (
        "import sys, capml_core.config.reference as m; "
        "bad = [n for n in ('prefect', 'streamlit') if n in sys.modules]; "
        "assert not bad, bad; sys.exit(m.main(['--check', 'docs/configuration-reference.md']))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "docs/configuration-reference.md is up to date" in done.stdout

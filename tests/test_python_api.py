"""docs/python-api.md runs: its Python blocks, in order, in one fresh interpreter (the notebook path of the API)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = ["python-api.md", "python-api-phonons.md"]


def code_blocks(document: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", document.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCS)
def test_the_python_api_document_runs_as_written(name: str, tmp_path: Path) -> None:
    document = REPO / "docs" / name
    if not document.exists():
        pytest.skip(f"{name} not written")
    blocks = code_blocks(document)
    assert len(blocks) >= 3, f"{name}: expected runnable examples"
    script = tmp_path / "notebook.py"
    script.write_text("\n\n".join(blocks), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    if name == "python-api.md":
        out = done.stdout
        assert "40 Ag24Br8S8" in out  # the 2x2x2 supercell of the 5-atom parent
        assert "70 labellings, 6 inequivalent" in out  # C(8, 4) on the 8 halogen sites, 6 symmetry classes
        assert "p(300 K) sums to 1.0" in out
        assert re.search(r"41 frames;", out)  # frame 0 and every 5 of 200 steps

"""VASP levels: complete input sets written exactly (ASE's VASP calculator), and vasprun.xml parsed.

VASP is not installed here: the POTCARs are placeholders the test writes, and the vasprun.xml a small file the
test writes from known numbers (in VASP's species-grouped atom order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase.io import read
from ase.units import GPa

from capml_core.dft.levels import VaspHsesol, VaspPbesol
from capml_core.errors import CalculationFailed, InvalidInputError
from tests.conftest import PBESOL_FILE


@pytest.fixture()
def potcars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "pp"
    for element in ("Ag", "S", "Br", "I"):
        folder = root / "potpaw_PBE" / element
        folder.mkdir(parents=True)
        (folder / "POTCAR").write_text(
            f"  PAW_PBE {element} 06Sep2000\n   TITEL  = PAW_PBE {element} 06Sep2000\n"
            f"   POMASS =  1.0; ZVAL   =   7.000    mass and valenz\n End of Dataset\n"
        )
    monkeypatch.setenv("VASP_PP_PATH", str(root))
    return root


def _incar(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def test_pbesol_and_hsesol_input_sets(potcars: Path, tmp_path: Path) -> None:
    atoms = read(PBESOL_FILE, index=0)  # 24 Ag, 8 S, 1 Br, 7 I, interleaved
    files = VaspPbesol().write_inputs(atoms, tmp_path / "pbesol")
    assert [f.name for f in files] == ["INCAR", "KPOINTS", "POSCAR", "POTCAR", "ase-sort.dat"]
    incar = _incar(tmp_path / "pbesol" / "INCAR")
    assert incar == {
        "ENCUT": "550.000000",
        "SIGMA": "0.010000",
        "EDIFF": "1.00e-06",
        "GGA": "PS",
        "PREC": "Accurate",
        "IBRION": "-1",
        "ISIF": "2",
        "ISMEAR": "0",
        "LORBIT": "11",
        "NELM": "200",
        "NSW": "0",
        "LCHARG": ".FALSE.",
        "LWAVE": ".FALSE.",
        "LREAL": ".FALSE.",
    }
    kpoints = (tmp_path / "pbesol" / "KPOINTS").read_text().splitlines()
    assert kpoints[1:4] == ["0", "Gamma", "6 6 6"]  # 12x12x12 per 5-atom cell on the 2x2x2 supercell
    poscar = read(tmp_path / "pbesol" / "POSCAR", format="vasp")
    assert poscar.get_chemical_formula() == atoms.get_chemical_formula()
    assert np.allclose(poscar.cell[:], atoms.cell[:])
    species_order = list(dict.fromkeys(poscar.get_chemical_symbols()))
    titles = [line.split()[3] for line in (tmp_path / "pbesol" / "POTCAR").read_text().splitlines() if "TITEL" in line]
    assert titles == species_order  # one POTCAR per species, POSCAR order
    hse = _incar(VaspHsesol().write_inputs(atoms, tmp_path / "hse")[0])
    assert hse["GGA"] == "PS" and hse["LHFCALC"] == ".TRUE." and hse["HFSCREEN"] == "0.200000"
    assert hse["AEXX"] == "0.250000" and hse["ALGO"] == "Damped"


def test_missing_potcars_are_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VASP_PP_PATH", raising=False)
    with pytest.raises(InvalidInputError, match="set VASP_PP_PATH"):
        VaspPbesol().write_inputs(read(PBESOL_FILE, index=0), tmp_path / "x")


def _vasprun(
    atoms_sorted, energy: float, forces: np.ndarray, stress_kbar: np.ndarray, eigenvalues, occupations, n_scf: int = 12
) -> str:
    def varray(name: str, rows) -> str:
        body = "".join(f"<v>{' '.join(f'{v:.10f}' for v in row)}</v>" for row in rows)
        return f'<varray name="{name}">{body}</varray>'

    structure = (
        f"<crystal>{varray('basis', atoms_sorted.cell[:])}</crystal>"
        f"{varray('positions', atoms_sorted.get_scaled_positions())}"
    )
    atominfo = "".join(f"<rc><c>{s}</c><c>1</c></rc>" for s in atoms_sorted.get_chemical_symbols())
    e = f'<energy><i name="e_fr_energy">{energy}</i><i name="e_0_energy">{energy}</i></energy>'
    scsteps = "".join(f"<scstep>{e}</scstep>" for _ in range(n_scf))
    levels = "".join(f"<r>{eps} {occ}</r>" for eps, occ in zip(eigenvalues, occupations, strict=True))
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?><modeling>'
        '<kpoints><varray name="kpointlist"><v>0 0 0</v></varray><varray name="weights"><v>1</v></varray></kpoints>'
        '<parameters><i name="NELM">200</i></parameters>'
        f'<atominfo><array name="atoms"><set>{atominfo}</set></array></atominfo>'
        f'<structure name="initialpos">{structure}</structure>'
        f"<calculation>{scsteps}<structure>{structure}</structure>{varray('forces', forces)}"
        f"{varray('stress', stress_kbar)}{e}"
        f'<eigenvalues><array><set><set comment="spin 1"><set comment="kpoint 1">{levels}</set></set></set></array>'
        '</eigenvalues><dos><i name="efermi">1.2</i></dos></calculation></modeling>'
    )


def test_vasprun_is_parsed_back_in_capml_atom_order(potcars: Path, tmp_path: Path) -> None:
    atoms = read(PBESOL_FILE, index=0)
    run = tmp_path / "run"
    VaspPbesol().write_inputs(atoms, run)
    sort = np.loadtxt(run / "ase-sort.dat", dtype=int)[:, 0]
    forces = np.random.default_rng(0).normal(size=(40, 3))  # in capml's order
    stress_kbar = np.array([[10.0, 1.0, 2.0], [1.0, 20.0, 3.0], [2.0, 3.0, 30.0]])
    eigenvalues = [-3.0, -1.0, 0.5, 2.0, 2.7, 4.0]
    occupations = [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    (run / "vasprun.xml").write_text(
        _vasprun(atoms[sort], -150.25, forces[sort], stress_kbar, eigenvalues, occupations)
    )
    result = VaspPbesol().parse(run)
    assert result.energy_ev == pytest.approx(-150.25)
    assert np.allclose(result.forces_ev_per_a, forces)  # resorted to capml's atom order
    # VASP's stress is in kbar, positive = compressive; ASE's (and capml's) in eV/Å³, positive = tensile
    assert np.allclose(result.stress_ev_per_a3, -0.1 * GPa * np.array([10.0, 20.0, 30.0, 3.0, 2.0, 1.0]))
    assert result.gap_ev == pytest.approx(1.5)  # 2.0 - 0.5
    assert result.extras["scf_steps"] == 12
    hse = VaspHsesol().parse(run)
    assert hse.gap_ev == pytest.approx(1.5) and hse.energy_ev is None and hse.forces_ev_per_a is None
    (run / "vasprun.xml").write_text(
        _vasprun(atoms[sort], -150.25, forces[sort], stress_kbar, eigenvalues, occupations, n_scf=200)
    )
    with pytest.raises(CalculationFailed, match="did not converge in NELM"):
        VaspPbesol().parse(run)
    (run / "vasprun.xml").write_text("<modeling><kpoints>")
    with pytest.raises(CalculationFailed, match="no complete vasprun.xml"):
        VaspPbesol().parse(run)


def test_compute_runs_the_configured_command(potcars: Path, tmp_path: Path) -> None:
    """Orchestration only: the 'VASP' here is a shell command that drops a prepared vasprun.xml."""
    atoms = read(PBESOL_FILE, index=0)
    with pytest.raises(CalculationFailed, match="no VASP command configured"):
        VaspPbesol().compute(atoms, workdir=tmp_path / "a")
    probe = tmp_path / "probe"
    VaspPbesol().write_inputs(atoms, probe)
    sort = np.loadtxt(probe / "ase-sort.dat", dtype=int)[:, 0]
    prepared = tmp_path / "prepared.xml"
    prepared.write_text(_vasprun(atoms[sort], -1.0, np.zeros((40, 3)), np.zeros((3, 3)), [0.0, 2.0], [1.0, 0.0]))
    level = VaspPbesol(command=f"test -f INCAR && test -f POTCAR && cp {prepared} vasprun.xml")
    result = level.compute(atoms, workdir=tmp_path / "b")
    assert result.gap_ev == pytest.approx(2.0) and result.wall_time_s is not None
    with pytest.raises(CalculationFailed, match="exited 1"):
        VaspPbesol(command="false").compute(atoms, workdir=tmp_path / "c")


def test_vasp_runs_only_with_a_command() -> None:
    assert "no VASP command configured (reference.vasp_pbesol.command)" in VaspPbesol().unavailable_reason()
    assert VaspHsesol(command="srun vasp_std").unavailable_reason() is None


def test_a_failed_vasp_run_keeps_its_output_in_the_logs(potcars: Path, tmp_path: Path) -> None:
    from capml_core.stages.labelling import _label_one

    atoms = read(PBESOL_FILE, index=0)
    command = "echo 'VERY BAD NEWS: ZBRENT' > OUTCAR; echo 'iteration 1'; echo 'out of memory' >&2; exit 3"
    record = _label_one(VaspPbesol(command=command), "abc", atoms, str(tmp_path / "logs"))
    assert record.status == "failed" and "exited 3" in (record.error or "")
    kept = {p.name: p.read_text() for p in (tmp_path / "logs").iterdir()}
    assert kept["abc-vasp-stdout.txt"] == "iteration 1\n" and kept["abc-vasp-stderr.txt"] == "out of memory\n"
    assert "ZBRENT" in kept["abc-OUTCAR"]

"""MACE model files that cannot run code: capml's own form, and the refusal of pickles.

A MACE ``.model`` file, as MACE's trainer writes it, is a pickled ``torch.nn.Module``: loading it runs
whatever the pickle names (``torch.fx.graph_module.reduce_graph_module`` even executes Python source stored
in the file), so a crafted file runs its own commands. capml therefore loads MACE models only in its own form,
a torch zip file holding

- ``format``: :data:`SAFE_FORMAT`,
- ``config_json``: the model's construction arguments (MACE's ``extract_config_mace_model``) as JSON, classes
  and functions by name, resolved only against an allow-list (MACE's model and block classes, a few
  activation functions),
- ``state_dict``: the weights (tensors only),

read with ``torch.load(weights_only=True)``: nothing but tensors and plain containers is unpickled, and the
module is built by MACE's own code from the allow-listed names. capml writes this form itself after every
training (from the file MACE's trainer has just written in the same run). A MACE file from elsewhere (a
foundation model) is converted once, by a user who trusts it, with ``capml mlip convert FILE OUT --trust``
(:func:`convert_trusted_pickle`): the only place where capml unpickles a model, and only when told to.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from capml_core.errors import InvalidInputError
from capml_core.provenance import file_sha256

#: Value of the ``format`` entry of a capml MACE file.
SAFE_FORMAT = "capml-mace-1"
#: File name suffix of capml's MACE form.
SAFE_SUFFIX = ".capml-mace.pt"
#: Model classes capml builds (``mace.modules.models``).
MODEL_CLASSES = ("MACE", "ScaleShiftMACE")
#: Modules whose ``torch.nn.Module`` subclasses a config may name (interaction, readout blocks).
BLOCK_MODULES = ("mace.modules.blocks",)
#: Activation functions a config may name (``gate``), from ``torch.nn.functional``.
GATE_FUNCTIONS = ("silu", "tanh", "sigmoid", "relu", "gelu", "softplus", "abs")


def import_torch():  # torch imported lazily
    """torch, with mace imported first (e3nn's constants load under torch 2.13 only after mace is)."""
    import mace  # noqa: F401  (before e3nn: its constants load under torch 2.13 only after mace is imported)
    import torch

    return torch


# ------------------------------------------------------------------------------------------- encoding
def _encode(value: Any, field: str) -> Any:
    """A construction argument as JSON: classes/functions by name, irreps as text, arrays as lists."""
    torch = import_torch()
    from e3nn import o3

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, o3.Irreps):
        return {"irreps": str(value)}
    if isinstance(value, type):
        return {"class": f"{value.__module__}.{value.__qualname__}"}
    if callable(value) and getattr(value, "__module__", "").startswith("torch"):
        return {"function": value.__name__}
    if isinstance(value, torch.Tensor):
        return {"tensor": value.detach().cpu().tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray | np.generic):
        return {"array": np.asarray(value).tolist(), "dtype": str(np.asarray(value).dtype)}
    if isinstance(value, list | tuple):
        return [_encode(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, f"{field}.{k}") for k, v in value.items()}}
    raise InvalidInputError(f"MACE construction argument {field!r} of type {type(value).__name__}: not convertible")


def _allowed_class(name: str, field: str) -> type:
    torch = import_torch()
    import importlib

    module_name, _, class_name = name.rpartition(".")
    if module_name not in BLOCK_MODULES:
        raise InvalidInputError(
            f"{field}: class {name!r} is not allowed; allowed: classes of {', '.join(BLOCK_MODULES)}"
        )
    found = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(found, type) and issubclass(found, torch.nn.Module)):
        raise InvalidInputError(f"{field}: {name!r} is not a torch module class of {module_name}")
    return found


def _decode(value: Any, field: str) -> Any:
    """Inverse of :func:`_encode`, resolving names only against the allow-lists."""
    torch = import_torch()
    from e3nn import o3

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list):
        return [_decode(item, f"{field}[{i}]") for i, item in enumerate(value)]
    if not isinstance(value, dict) or len(value) not in (1, 2):
        raise InvalidInputError(f"{field}: unexpected entry {str(value)[:80]!r}")
    if "irreps" in value:
        return o3.Irreps(str(value["irreps"]))
    if "class" in value:
        return _allowed_class(str(value["class"]), field)
    if "function" in value:
        name = str(value["function"])
        if name not in GATE_FUNCTIONS:
            raise InvalidInputError(f"{field}: function {name!r} is not allowed; allowed: {', '.join(GATE_FUNCTIONS)}")
        return torch.abs if name == "abs" else getattr(torch.nn.functional, name)
    if "tensor" in value:
        return torch.tensor(value["tensor"], dtype=getattr(torch, str(value["dtype"])))
    if "array" in value:
        return np.asarray(value["array"], dtype=np.dtype(str(value["dtype"])))
    if "dict" in value:
        return {k: _decode(v, f"{field}.{k}") for k, v in value["dict"].items()}
    raise InvalidInputError(f"{field}: unexpected entry {str(value)[:80]!r}")


# ------------------------------------------------------------------------------------------- reading and writing
def write_safe_model(model: Any, path: str | Path) -> Path:
    """Write a MACE module in capml's form (construction arguments + state dict); returns the path."""
    torch = import_torch()
    from mace.tools.scripts_utils import extract_config_mace_model

    class_name = type(model).__name__
    if class_name not in MODEL_CLASSES:
        raise InvalidInputError(f"a {class_name} model: capml stores {', '.join(MODEL_CLASSES)} models")
    config = extract_config_mace_model(model)
    if "error" in config:
        raise InvalidInputError(f"MACE could not read the model's construction arguments: {config['error']}")
    payload = {
        "format": SAFE_FORMAT,
        "model_class": class_name,
        "config_json": json.dumps({key: _encode(value, key) for key, value in config.items()}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)
    return path


def _pickled_globals(path: Path) -> list[str]:
    """Classes and functions a pickle (torch zip or plain pickle) names, read without running anything."""
    import pickletools

    torch = import_torch()
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a plain pickle: read its opcodes
        pass
    names: set[str] = set()
    strings: list[str] = []
    try:
        with open(path, "rb") as handle:
            for opcode, argument, _ in pickletools.genops(handle):
                if opcode.name == "GLOBAL":
                    names.add(str(argument).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.add(f"{strings[-2]}.{strings[-1]}")
                elif isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # a damaged pickle: report what was found so far
        pass
    return sorted(names)


def _unreadable(path: Path, err: Exception) -> InvalidInputError:
    reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return InvalidInputError(f"{path}: not a MACE model file (not a readable torch file: {reason[:200]})")


def load_safe_model(path: str | Path) -> Any:
    """The MACE module of a capml MACE file; never unpickles anything but tensors (float64 or as stored).

    Raises
    ------
    InvalidInputError
        The file is missing, unreadable, a pickle (names what it would run), or not capml's form.
    """
    torch = import_torch()
    import pickle

    path = Path(path)
    if not path.is_file():
        raise InvalidInputError(f"{path}: MACE model file not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        names = _pickled_globals(path)
        if not names and "GLOBAL" not in str(err):  # no class or function named: not a pickle of objects
            raise _unreadable(path, err) from err
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        raise InvalidInputError(
            f"{path}: a pickled Python file ({shown or 'objects other than tensors'}); loading it would run code "
            "it names, so capml refuses it. A MACE .model file you trust: convert it once with "
            f"'capml mlip convert {path} OUT{SAFE_SUFFIX} --trust' and use OUT{SAFE_SUFFIX} (docs/operations.md)"
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise _unreadable(path, err) from err
    if not isinstance(payload, dict) or payload.get("format") != SAFE_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InvalidInputError(
            f"{path}: not a capml MACE file (format {found!r}, expected {SAFE_FORMAT!r}); "
            f"convert a MACE .model file you trust with 'capml mlip convert FILE OUT{SAFE_SUFFIX} --trust'"
        )
    class_name = payload.get("model_class")
    if class_name not in MODEL_CLASSES:
        raise InvalidInputError(f"{path}: model class {class_name!r}; allowed: {', '.join(MODEL_CLASSES)}")
    try:
        raw = json.loads(payload["config_json"])
        config = {key: _decode(value, f"{path.name}: {key}") for key, value in raw.items()}
        state = payload["state_dict"]
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise InvalidInputError(f"{path}: damaged capml MACE file ({type(err).__name__}: {err})") from err
    from mace.modules import models

    try:
        model = getattr(models, class_name)(**config)
        model.load_state_dict(state, strict=True)
    except (TypeError, RuntimeError, ValueError, KeyError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InvalidInputError(
            f"{path}: the weights do not fit the stored construction arguments ({first[:200]})"
        ) from err
    model.eval()
    return model


def convert_trusted_pickle(source: str | Path, target: str | Path) -> Path:
    """Convert a MACE ``.model`` pickle **that you trust** to capml's form. Unpickling runs the file's code.

    capml calls it on its own trainer's output, written moments before in the same run, and the command
    ``capml mlip convert --trust`` on a user's file; nothing else in capml unpickles a model.
    """
    torch = import_torch()
    source = Path(source)
    if not source.is_file():
        raise InvalidInputError(f"{source}: MACE model file not found")
    try:
        model = torch.load(source, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises many types on a file that is not a pickle/zip
        raise InvalidInputError(f"{source}: not a MACE model file (torch.load failed: {err})") from err
    if not isinstance(model, torch.nn.Module):
        raise InvalidInputError(f"{source}: holds a {type(model).__name__}, not a MACE model")
    return write_safe_model(model, target)


def write_trusted_pickle(model: Any, path: str | Path) -> Path:
    """Write a module capml built (from its own form) as the pickle MACE's trainer reads (``--foundation_model``)."""
    torch = import_torch()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model, path)
    return path


@dataclass(frozen=True)
class MaceModelInfo:
    """What capml needs to know about a MACE model file (capml's form): cutoff (Å), size, elements, checksum."""

    path: Path
    sha256: str
    r_max_a: float
    channels: int | None
    max_l: int | None
    correlation: int | None
    atomic_numbers: tuple[int, ...]


def inspect_mace_model(path: str | Path) -> MaceModelInfo:
    """Open a MACE file in capml's form (never a pickle) and read its cutoff, size and elements.

    Raises
    ------
    InvalidInputError
        The file does not exist, is a pickle, or is not a MACE model in capml's form.
    """
    path = Path(path)
    model = load_safe_model(path)
    channels = max_l = correlation = None
    try:
        from e3nn import o3
        from mace.tools.scripts_utils import extract_config_mace_model

        settings = extract_config_mace_model(model)
        hidden = o3.Irreps(str(settings["hidden_irreps"]))
        channels = sum(mul for mul, irrep in hidden if irrep.l == 0)
        max_l = max(irrep.l for _, irrep in hidden)
        correlation = int(np.max(settings["correlation"]))
    except Exception:  # an unusual MACE variant: size unknown, cutoff still checked
        pass
    return MaceModelInfo(
        path=path,
        sha256=file_sha256(path),
        r_max_a=float(model.r_max),
        channels=channels,
        max_l=max_l,
        correlation=correlation,
        atomic_numbers=tuple(int(z) for z in model.atomic_numbers),
    )

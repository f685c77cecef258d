"""The model file (model.pt): its format, how it is written and how it is read back."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.datasets import BUILTIN
from audit.errors import AuditError
from audit.models import ExportedModule, build_factory_model, build_model, check_outputs

MODEL_FORMAT = "rai-audit-model/1"


def checkpoint_bytes(
    spec: dict[str, Any], model: nn.Module, dataset: Dataset, config: RunConfig, metadata_: dict[str, Any]
) -> bytes:
    """The bytes of model.pt: the recipe, the weights (on the CPU), the data schema, plugin facts and the config."""
    buffer = io.BytesIO()
    torch.save(
        {
            "format": MODEL_FORMAT,
            "spec": spec,
            "state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
            "schema": dataset.schema(),
            "metadata": metadata_,
            "config": config.to_dict(),
        },
        buffer,
    )
    return buffer.getvalue()


def load_checkpoint(path: str) -> dict[str, Any]:
    """Load model.pt with ``weights_only=True``; one clear line when it is not a rai-audit model."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"model file {path} does not exist")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise AuditError(
            f"model file {path} could not be read ({type(exc).__name__}); expected a model.pt written by 'audit train'"
        ) from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != MODEL_FORMAT:
        raise AuditError(
            f"model file {path} is not a rai-audit model; expected a model.pt written by 'audit train'"
        )
    _check_parts(checkpoint, path)
    return checkpoint


# What a model file must hold, and what its schema must hold, before anything is built from it.
PARTS = {"spec": dict, "state_dict": dict, "schema": dict}
SCHEMA_KEYS = {"name": str, "kind": str, "classes": list, "target": str, "input_shape": list}


def _check_parts(checkpoint: dict[str, Any], path: str) -> None:
    for key, kind in PARTS.items():
        if not isinstance(checkpoint.get(key), kind):
            raise AuditError(
                f"model file {path} lacks its {key}; expected a model.pt written by 'audit train'"
            )
    schema = checkpoint["schema"]
    missing = [k for k, kind in SCHEMA_KEYS.items() if not isinstance(schema.get(k), kind)]
    if missing or schema["kind"] not in ("tabular", "image"):
        raise AuditError(
            f"model file {path} has a damaged schema ({', '.join(missing) or 'kind'}); "
            "expected a model.pt written by 'audit train'"
        )
    if schema["kind"] == "tabular" and not isinstance(schema.get("preprocessor"), dict):
        raise AuditError(
            f"model file {path} lacks the preprocessing of its tabular data; expected a model.pt "
            "written by 'audit train'"
        )


def defaults_from_checkpoint(config: RunConfig, checkpoint: dict[str, Any]) -> None:
    """Take what ``audit evaluate`` must reuse from the saved model: its data and groups unless given, its splits.

    Every value taken is recorded as coming from the model file. Built-in data is split again exactly as in
    training (same fractions, same seed), so the audit sees the model's own test rows.
    """
    schema, saved = checkpoint["schema"], checkpoint.get("config", {})
    if config.data is None:
        if schema.get("name") not in BUILTIN:
            raise AuditError(
                f"the model was trained on {schema.get('name')!r}, not on built-in data; "
                "pass --data FILE with the rows to audit"
            )
        config.set_from("model file", data=schema["name"])
    if config.data in BUILTIN and config.data != schema.get("name"):
        raise AuditError(
            f"--data {config.data} does not match the model, which was trained on {schema.get('name')}"
        )
    if schema["kind"] == "image" and config.data not in BUILTIN:
        raise AuditError(
            f"--data {config.data}: the model was trained on images ({schema['name']}); a table cannot "
            f"be fed to it; leave --data out to audit it on {schema['name']}"
        )
    if not config.sensitive:
        config.set_from("model file", sensitive=list(schema.get("sensitive", [])))
    if config.data in BUILTIN:
        _take_training_split(config, saved)


def _take_training_split(config: RunConfig, saved: dict[str, Any]) -> None:
    """Built-in data is split again exactly as in training; a different --seed or fraction would audit training rows."""
    for key in ("val_fraction", "test_fraction", "seed"):
        if key not in saved:
            continue
        if key in config.sources and getattr(config, key) != saved[key]:
            flag = "--" + key.replace("_", "-")
            raise AuditError(
                f"{flag} {getattr(config, key)} differs from the model's training run ({saved[key]}): on "
                f"{config.data} the audit must see the model's own test rows; leave {flag} out"
            )
        config.set_from("model file", **{key: saved[key]})


def model_from_checkpoint(
    checkpoint: dict[str, Any], path: str, *, trusted_factory: str | None = None
) -> nn.Module:
    """Build the saved model from its recipe and load its weights (CPU, eval mode).

    A built-in architecture is rebuilt from the allow-list; a factory only when ``trusted_factory`` (the user's
    --model-factory) names the same one: the file itself never chooses code to import.
    """
    model = build_model(checkpoint["spec"], trusted_factory=trusted_factory)
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        raise AuditError(
            f"model file {path} holds weights that do not fit its model recipe; the file is damaged"
        ) from None
    return model.eval()


# --- a model trained elsewhere: the user's factory and a state_dict, or a program file the user names -------------

STATE_DICT_HINT = "expected a state_dict saved with torch.save(model.state_dict(), PATH)"


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a state_dict with ``weights_only=True`` (tensors only); one line when the file is anything else."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"weights file {path} does not exist; {STATE_DICT_HINT}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or pickled-object file
        raise AuditError(
            f"weights file {path} could not be read ({type(exc).__name__}); {STATE_DICT_HINT}"
        ) from None
    if isinstance(state, dict) and state.get("format") == MODEL_FORMAT:
        raise AuditError(f"weights file {path} is a rai-audit model file; audit it with --model {path} alone")
    if not isinstance(state, dict) or not state:
        raise AuditError(
            f"weights file {path} holds a {type(state).__name__}, not a state_dict; {STATE_DICT_HINT}"
        )
    odd = next(
        (k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None
    )
    if odd is not None:
        raise AuditError(
            f"weights file {path} is not a state_dict (entry {odd!r} is a {type(state[odd]).__name__}, not a "
            f"tensor); {STATE_DICT_HINT}"
        )
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], *, path: str, factory: str) -> nn.Module:
    """Load ``state`` into the factory's model exactly (every key, every shape); name the first misfits."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} where the model has {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("lacks", missing), ("has unexpected", unexpected), ("has shapes", wrong))
        if names
    ]
    if problems:
        raise AuditError(
            f"weights file {path} does not fit the model --model {factory} builds: it {'; '.join(problems)}; "
            "expected that model's state_dict"
        )
    model.load_state_dict(state)
    return model.eval()


def program_kind(path: str) -> str:
    """``torchscript`` or ``export``, from the archive's members (a program file is a zip archive)."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(
            f"program file {path} does not exist; expected a TorchScript (.pt) or torch.export (.pt2) file"
        )
    try:
        with zipfile.ZipFile(file) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        names = []
    if any(n.endswith("/archive_format") for n in names):
        return "export"
    if any("/code/" in n for n in names) and any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    hint = "; a rai-audit model.pt goes to --model" if any(n.endswith("/data.pkl") for n in names) else ""
    raise AuditError(
        f"program file {path} is neither a TorchScript archive (torch.jit.save) nor a torch.export program "
        f"(torch.export.save){hint}"
    )


def load_program(path: str, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Load a program the user named (--program): code by nature, so never reached from a file's contents."""
    kind = program_kind(path)
    try:
        if kind == "torchscript":
            model: nn.Module = torch.jit.load(path, map_location="cpu")
        else:
            model = ExportedModule(torch.export.load(path).module())
    except Exception as exc:  # torch raises many types for a damaged program
        raise AuditError(
            f"program file {path} could not be loaded ({type(exc).__name__}: {exc})".splitlines()[0]
        ) from None
    hint = " (export it with a dynamic batch dimension)" if kind == "export" else ""
    check_outputs(model, what=f"--program {path}{hint}", input_shape=input_shape, classes=num_classes)
    return model.eval()


def external_model(
    config: RunConfig, *, input_shape: tuple[int, ...], num_classes: int
) -> tuple[nn.Module, dict[str, Any]]:
    """The model trained elsewhere that the command line names, and what the report records of it."""
    if config.program:
        model = load_program(config.program, input_shape=input_shape, num_classes=num_classes)
        facts = {"kind": f"program ({program_kind(config.program)})", "path": config.program}
        return model, {**facts, "sha256": _file_sha256(config.program)}
    state = load_state_dict_file(config.weights)
    model = build_factory_model(config.model_path, input_shape=input_shape, num_classes=num_classes)
    model = load_weights(model, state, path=config.weights, factory=config.model_path)
    facts = {"kind": "factory and state_dict", "factory": config.model_path, "weights": config.weights}
    return model, {**facts, "sha256": _file_sha256(config.weights)}


def module_facts(model: nn.Module) -> dict[str, Any]:
    """What the report records of a module given through the API: its class and the SHA-256 of its state_dict."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    kind = f"{type(model).__module__}.{type(model).__qualname__}"
    return {
        "kind": "Python object (API)",
        "class": kind,
        "sha256": hashlib.sha256(buffer.getvalue()).hexdigest(),
    }


def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


EVALUATE_NEEDS = "--model MODEL.pt, --model package.module:factory --weights W.pt, or --program FILE"


def is_external(config: RunConfig, *, module_given: bool = False) -> bool:
    """Check which model an evaluate run audits, before any data is read; True for one trained elsewhere."""
    if module_given or config.program:
        if config.program and config.model_path:
            raise AuditError("give --model or --program, not both")
        if config.weights:
            raise AuditError(
                "--weights applies with --model package.module:factory, not with a program or module"
            )
        return _check_external(config)
    if config.model_path is None:
        raise AuditError(f"audit evaluate needs {EVALUATE_NEEDS}")
    factory = ":" in config.model_path and not Path(config.model_path).is_file()
    if factory or config.weights:
        if not factory:
            raise AuditError(
                f"--weights needs --model package.module:factory, got --model {config.model_path}"
            )
        if not config.weights:
            raise AuditError(
                f"--model {config.model_path} names a factory; pass --weights with its state_dict file"
            )
        return _check_external(config)
    given = [
        f for f, v in (("--features-ready", config.features_ready), ("--features", config.features)) if v
    ]
    if config.train_data and (config.data is None or config.data in BUILTIN):
        raise AuditError(
            "--train-data applies with --data FILE; on built-in data the model's training rows are known"
        )
    if given:
        raise AuditError(
            f"{', '.join(given)} applies to a model trained elsewhere ({EVALUATE_NEEDS.split(', ', 1)[1]}); "
            f"{config.model_path} holds its own preprocessing"
        )
    return False


def _check_external(config: RunConfig) -> bool:
    if not config.features_ready:
        raise AuditError(
            "a model trained elsewhere has no saved preprocessing: pass --features-ready (--data's columns are "
            "its inputs as they are; --features COL,... names them in order)"
        )
    if config.data is None or config.data in BUILTIN:
        raise AuditError(
            "--data FILE is required for a model trained elsewhere: a table of its inputs as they are "
            f"(built-in data{f' {config.data}' if config.data else ''} is rai-audit's own preprocessing)"
        )
    typed = {"--model-factory": config.model_factory, "--numeric": config.numeric}
    typed |= {"--categorical": config.categorical, "--drop-sensitive": config.drop_sensitive}
    given = [flag for flag, value in typed.items() if value]
    if given:
        raise AuditError(
            f"{given[0]} does not apply to a model trained elsewhere (--features-ready feeds columns as they "
            "are; its columns are not retyped)"
        )
    return True

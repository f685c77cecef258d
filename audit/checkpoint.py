"""The model file (model.pt): its format, how it is written and how it is read back."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.datasets import BUILTIN
from audit.errors import AuditError
from audit.models import build_model

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

"""The model file (model.pt): its format, how it is written and how it is read back."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.errors import AuditError

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
    return checkpoint

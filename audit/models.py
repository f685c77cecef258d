"""Built-in models (an MLP for tabular data, a small CNN for images) and a user's own via ``module:factory``."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import torch
from torch import nn

from audit.errors import AuditError


class MLP(nn.Module):
    """A multilayer perceptron: Linear -> ReLU -> Dropout blocks, then a linear head."""

    def __init__(self, *, input_dim: int, num_classes: int, hidden: list[int], dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))


class SmallCNN(nn.Module):
    """Two or more 3x3 conv blocks (GroupNorm, not BatchNorm, so DP-SGD can use it as is) and a linear head."""

    def __init__(
        self, *, input_shape: tuple[int, ...], num_classes: int, channels: list[int], dropout: float = 0.0
    ) -> None:
        super().__init__()
        in_ch, height, width = input_shape
        blocks: list[nn.Module] = []
        for i, out_ch in enumerate(channels):
            blocks += [
                nn.Conv2d(in_ch, out_ch, 3, padding=1),
                nn.GroupNorm(min(4, out_ch), out_ch),
                nn.ReLU(),
            ]
            if i < len(channels) - 1 and min(height, width) >= 4:
                blocks.append(nn.MaxPool2d(2))
                height, width = height // 2, width // 2
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch * height * width, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def model_spec(
    *,
    name: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    hidden: list[int],
    channels: list[int],
    dropout: float,
) -> dict[str, Any]:
    """Return the JSON-able recipe that ``build_model`` turns into a module (saved in model.pt)."""
    if name == "auto":
        name = "cnn" if len(input_shape) == 3 else "mlp"
    if name == "mlp":
        width = 1
        for dim in input_shape:
            width *= dim
        return {
            "name": "mlp",
            "kwargs": {
                "input_dim": width,
                "num_classes": num_classes,
                "hidden": list(hidden),
                "dropout": dropout,
            },
        }
    if name == "cnn":
        if len(input_shape) != 3:
            raise AuditError(
                f"--model cnn needs image data (C, H, W); this data has input shape {tuple(input_shape)}"
            )
        return {
            "name": "cnn",
            "kwargs": {
                "input_shape": list(input_shape),
                "num_classes": num_classes,
                "channels": list(channels),
                "dropout": dropout,
            },
        }
    if ":" in name:
        return {"name": name, "kwargs": {"input_shape": list(input_shape), "num_classes": num_classes}}
    raise AuditError(f"--model {name!r} is unknown; expected auto, mlp, cnn or package.module:factory")


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Build a model from its recipe; a user's factory gets the keyword arguments it accepts."""
    model = _build(spec)
    if spec.get("batchnorm_replaced"):
        model, _ = replace_batchnorm(model)
    return model


def _build(spec: dict[str, Any]) -> nn.Module:
    name, kwargs = spec["name"], dict(spec["kwargs"])
    if name == "mlp":
        return MLP(**kwargs)
    if name == "cnn":
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
        return SmallCNN(**kwargs)
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise AuditError(
            f"--model {name!r} could not be loaded ({exc}); expected package.module:factory on the Python path"
        ) from None
    accepted = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    model = factory(**{k: v for k, v in kwargs.items() if takes_any or k in accepted})
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model {name!r} returned {type(model).__name__}; expected a torch.nn.Module")
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def replace_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """Replace every BatchNorm with a per-sample normaliser; return the model and the count.

    BatchNorm mixes samples within a batch, which per-sample gradients (DP-SGD) cannot allow.
    BatchNorm2d/3d become GroupNorm(min(32, C), C), as Opacus' ModuleValidator.fix does. BatchNorm1d
    becomes LayerNorm(C): Opacus' GroupNorm(C, C) on flat (N, C) features normalises each value on its
    own, which maps every activation to zero.
    """
    replaced = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.BatchNorm1d):
            setattr(model, name, nn.LayerNorm(child.num_features))
            replaced += 1
        elif isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(model, name, nn.GroupNorm(min(32, child.num_features), child.num_features, affine=True))
            replaced += 1
        else:
            replaced += replace_batchnorm(child)[1]
    return model, replaced

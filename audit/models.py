"""Built-in models (an MLP for tabular data, a small CNN for images) and a user's own via ``module:factory``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
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


BUILTIN_MODELS = {"mlp": MLP, "cnn": SmallCNN}
# the keyword arguments a built-in recipe may hold, with their types: a model file is data, checked as such
RECIPE_KEYS = {
    "mlp": {"input_dim": int, "num_classes": int, "hidden": list, "dropout": (int, float)},
    "cnn": {"input_shape": list, "num_classes": int, "channels": list, "dropout": (int, float)},
}


def build_model(spec: dict[str, Any], *, trusted_factory: str | None = None) -> nn.Module:
    """Build a model from its recipe: a built-in architecture, or the factory the user named (``trusted_factory``).

    A recipe is data (it may come from a model file): it never chooses code to import. A factory recipe is
    built only when its name equals the one the user gave on the command line or in the API.
    """
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("name"), str)
        or not isinstance(spec.get("kwargs"), dict)
    ):
        raise AuditError("the model recipe is damaged; expected {'name': ..., 'kwargs': {...}}")
    name = spec["name"]
    if name in BUILTIN_MODELS:
        model = _build_builtin(name, spec["kwargs"])
    elif ":" in name and name == trusted_factory:
        model = _build_factory(name, spec["kwargs"])
    elif ":" in name:
        raise AuditError(
            f"the model file's recipe names the factory {name!r}; a model file never chooses code to run: "
            f"if you trust that code, pass --model-factory {name}"
        )
    else:
        raise AuditError(
            f"the model recipe names {name!r}; expected one of {', '.join(BUILTIN_MODELS)} or a factory"
        )
    if spec.get("batchnorm_replaced"):
        model, _ = replace_batchnorm(model)
    return model


def _build_builtin(name: str, kwargs: dict[str, Any]) -> nn.Module:
    allowed = RECIPE_KEYS[name]
    wrong = [
        k
        for k, v in kwargs.items()
        if k not in allowed or not isinstance(v, allowed[k]) or isinstance(v, bool)
    ]
    if wrong or set(kwargs) != set(allowed):
        raise AuditError(f"the {name} recipe is damaged (keys {sorted(kwargs)}); expected {sorted(allowed)}")
    kwargs = dict(kwargs)
    if name == "cnn":
        kwargs["input_shape"] = tuple(kwargs["input_shape"])
    try:
        return BUILTIN_MODELS[name](**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise AuditError(f"the {name} recipe is damaged ({exc})") from None


def load_factory(name: str) -> Callable[..., Any]:
    """Import ``package.module:factory`` (a name the user gave); one line naming what went wrong."""
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise AuditError(
            f"--model {name!r} could not be loaded ({exc}); expected package.module:factory on the Python path"
        ) from None
    except (
        Exception
    ) as exc:  # a module that fails to import (SyntaxError, an error at import time) is bad input
        raise AuditError(
            f"--model {name!r}: importing {module_name} failed ({type(exc).__name__}: {exc})"
        ) from None
    if not callable(factory):
        raise AuditError(f"--model {name!r} is a {type(factory).__name__}, not a callable factory")
    return factory


def _required_arguments(
    factory: Callable[..., Any], given: dict[str, Any]
) -> tuple[list[str], dict[str, Any]]:
    """(parameters the factory requires that it would not get, the keyword arguments it accepts)."""
    try:
        accepted = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return [], dict(given)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    kinds = (
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.POSITIONAL_ONLY,
    )
    required = [
        p.name
        for p in accepted.values()
        if p.default is inspect.Parameter.empty
        and p.kind in kinds
        and (p.name not in given or p.kind == p.POSITIONAL_ONLY)
    ]
    return required, {k: v for k, v in given.items() if takes_any or k in accepted}


def _build_factory(name: str, kwargs: dict[str, Any]) -> nn.Module:
    factory = load_factory(name)
    required, passed = _required_arguments(factory, kwargs)
    if required:
        raise AuditError(
            f"--model {name!r} requires {', '.join(required)}; a factory receives only input_shape and num_classes "
            "(keyword arguments) and may take any subset of them"
        )
    try:
        model = factory(**passed)
    except Exception as exc:  # the user's code failed: one line naming it, no traceback
        raise AuditError(f"--model {name!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise AuditError(f"--model {name!r} returned {type(model).__name__}; expected a torch.nn.Module")
    _check_outputs(model, name, kwargs)
    return model


def _check_outputs(model: nn.Module, name: str, kwargs: dict[str, Any]) -> None:
    """A factory's model must give one logit per class: checked on two zero rows before any training."""
    check_outputs(
        model, what=f"--model {name!r}", input_shape=kwargs["input_shape"], classes=kwargs["num_classes"]
    )


def build_factory_model(name: str, *, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The user's ``package.module:factory`` (named by the user, never by a file), built and checked."""
    return _build_factory(name, {"input_shape": list(input_shape), "num_classes": num_classes})


def check_outputs(model: nn.Module, *, what: str, input_shape: Any, classes: int) -> None:
    """Refuse a model that does not give (2, classes) logits for two zero rows of ``input_shape`` (one line)."""
    shape = tuple(input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((2, *shape)))
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise AuditError(
            f"{what} failed on inputs of shape {(2, *shape)}: {type(exc).__name__}: {first}"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AuditError(
            f"{what} returns outputs of shape {got} for 2 rows; expected (2, {classes}): one logit per class"
        )


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


class ExportedModule(nn.Module):
    """A ``torch.export`` program as a module. Its graph was exported in one mode and cannot switch (its
    ``eval()`` raises), so it is held outside the module tree; its parameters are listed for counting and moving."""

    def __init__(self, program: nn.Module) -> None:
        super().__init__()
        self.__dict__["program"] = program  # not a child: train()/eval() must not reach it
        self.weights = nn.ParameterList(list(program.parameters()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

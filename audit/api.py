"""The Python API: audit a model, trained here or elsewhere, and get a Report back. Keyword-only; returns new objects.

``audit.evaluate(model, data=..., target=..., sensitive=...)`` runs the same code path as ``audit evaluate`` (a
Dataset and a model, then every plugin's section); ``audit.train(data=..., target=...)`` the one of ``audit train``.
Nothing is written until ``Report.write(out_dir)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from audit import report as report_module
from audit.config import RunConfig, build_config
from audit.errors import AuditError
from audit.models import ExportedModule
from audit.outputs import write_outputs
from audit.plugins import get_plugin_manager
from audit.runner import RunOutcome, run_evaluate, run_train
from audit.signing import resolve_sign_key

FRAME_NAME = "dataframe"  # what a DataFrame is called in messages and in the report (it has no file name)


class Report(report_module.Report):
    """The report of one audit: ``.metrics`` (flat map), ``.sections``, ``.run``, ``.to_dict()``, ``.write()``."""

    model_bytes: bytes | None = None  # model.pt's bytes, for a report of a training run

    @classmethod
    def from_outcome(cls, outcome: RunOutcome) -> Report:
        """The report a run built (finalized: compliance, gate, headlines), as this class."""
        built = outcome.built
        report = cls(run=built.run, metrics=built.metrics, sections=built.sections)
        report.schema_version = built.schema_version
        report.model_bytes = outcome.model_bytes
        return report

    def write(self, out_dir: str | Path, *, sign_key: str | None = None) -> dict[str, Any]:
        """Write report.json, its renderings (and model.pt after training) into ``out_dir`` as one set; return the
        report as written (with its manifest, and a signature when ``sign_key`` names an Ed25519 private key)."""
        return write_outputs(Path(out_dir), self, self.model_bytes, resolve_sign_key(sign_key))


def evaluate(
    model: nn.Module | torch.export.ExportedProgram | str | Path,
    *,
    data: pd.DataFrame | str | Path,
    target: str | None = None,
    sensitive: list[str] | tuple[str, ...] = (),
    features: list[str] | None = None,
    train_data: pd.DataFrame | str | Path | None = None,
    weights: str | Path | None = None,
    model_factory: str | None = None,
    policy: str | Path | None = None,
    options: dict[str, Any] | None = None,
    **settings: Any,
) -> Report:
    """Audit ``model`` on ``data`` and return its Report; nothing is written (see ``Report.write``).

    ``model``: an ``nn.Module`` (or a loaded ``torch.export`` program) whose inputs are ``data``'s columns as they
    are (``features`` in order, else every column but ``target`` and ``sensitive``); a ``model.pt`` written by
    ``audit train``; or ``"package.module:factory"`` with ``weights`` (a state_dict file, read weights-only).
    ``train_data``: the model's training rows, for the membership-inference audit. ``options``: plugin options by
    name (``{"robustness": "eval"}``); ``settings``: other core options (``seed``, ``batch_size``, ...).
    """
    module = _as_module(model)
    settings.setdefault("quiet", True)  # no progress bars unless asked: the caller has the Report
    given = {"data": data, "target": target, "sensitive": list(sensitive), "policy": policy, **settings}
    given |= {"model_factory": model_factory, "weights": weights, "features": features}
    if module is None:
        given["model_path"] = str(model)
    if module is not None or weights is not None:
        given["features_ready"] = True
    given["train_data"] = train_data
    frames = {key: given[key] for key in ("data", "train_data") if isinstance(given[key], pd.DataFrame)}
    config = _config("evaluate", given, options)
    outcome = run_evaluate(config, get_plugin_manager(), module=module, frames=frames, write=False)
    return Report.from_outcome(outcome)


def train(
    *,
    data: pd.DataFrame | str | Path = "adult",
    target: str | None = None,
    sensitive: list[str] | tuple[str, ...] = (),
    policy: str | Path | None = None,
    options: dict[str, Any] | None = None,
    **settings: Any,
) -> tuple[nn.Module, Report]:
    """Train on ``data`` (a DataFrame, a CSV/Parquet path or a built-in name) and audit; return (model, Report).

    ``options`` and ``settings`` as for ``evaluate`` (``epochs``, ``hidden``, ``model``, ...); ``Report.write``
    writes the report set with model.pt.
    """
    settings.setdefault("quiet", True)
    given = {"data": data, "target": target, "sensitive": list(sensitive), "policy": policy, **settings}
    frame = data if isinstance(data, pd.DataFrame) else None
    outcome = run_train(_config("train", given, options), get_plugin_manager(), frame=frame, write=False)
    return outcome.model, Report.from_outcome(outcome)


def _as_module(model: Any) -> nn.Module | None:
    """An in-memory model as a module (a torch.export program wrapped: its graph cannot switch to eval mode)."""
    if isinstance(model, torch.export.ExportedProgram):
        return ExportedModule(model.module())
    if isinstance(model, nn.Module):
        try:
            model.eval()
        except (NotImplementedError, RuntimeError):  # ExportedProgram.module(): eval() is not supported
            return ExportedModule(model)
        return model
    if isinstance(model, (str, Path)):
        return None
    raise AuditError(
        f"model is a {type(model).__name__}; expected an nn.Module, a torch.export program, a model.pt path, "
        "or 'package.module:factory' with weights="
    )


def _config(command: str, given: dict[str, Any], options: dict[str, Any] | None) -> RunConfig:
    """A RunConfig as the CLI builds it: plugin option defaults, the caller's values recorded as from the API."""
    pm = get_plugin_manager()
    plugin_options = {
        o.dest: o for group in pm.hook.audit_cli_options() for o in (group or []) if command in o.commands
    }
    values: dict[str, Any] = {dest: o.kwargs.get("default") for dest, o in plugin_options.items()}
    unknown = [name for name in options or {} if name not in plugin_options]
    if unknown:
        raise AuditError(
            f"options {unknown[0]!r} is no plugin option; expected one of {', '.join(plugin_options)}"
        )
    values |= dict(options or {})
    core = {
        k: (FRAME_NAME if isinstance(v, pd.DataFrame) else str(v) if isinstance(v, Path) else v)
        for k, v in given.items()
    }
    core = {k: v for k, v in core.items() if v is not None and v != [] or k == "data"}
    values |= core | {"command": command}
    sources = {key: "Python API" for key in core}
    sources |= {f"options.{key}": "Python API" for key in options or {}}
    return build_config(values, plugin_options, sources=sources)

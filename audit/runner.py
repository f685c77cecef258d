"""Orchestrates one run: data -> model -> hooks -> training -> shared evaluation -> one report on disk."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import platform
import random
import shlex
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from audit import efficiency
from audit.compliance import collect_metric_specs, evidence_from_specs, refresh_compliance
from audit.config import RunConfig
from audit.data import Dataset, load_dataset
from audit.engine import (
    ShuffledBatches,
    TrainingSetup,
    TrainResult,
    attach_scheduler,  # noqa: F401
    make_optimizer,
    progress_bar,
    train,
)
from audit.errors import AuditError
from audit.evaluation import EvalContext, build_context, performance_section
from audit.models import build_model, count_parameters, model_spec
from audit.render import render_beside
from audit.report import Report, Section, Table, write_atomic

log = logging.getLogger(__name__)
MODEL_FORMAT = "rai-audit-model/1"
VERSIONED_PACKAGES = (
    "rai-audit",
    "torch",
    "opacus",
    "fairlearn",
    "torchattacks",
    "scikit-learn",
    "numpy",
    "pandas",
)


@dataclass
class RunOutcome:
    """What a run produced: the report (as written) and where."""

    report: dict[str, Any]
    out_dir: Path


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch from one seed; return the generator that drives batch order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def default_out_dir(config: RunConfig) -> Path:
    """``runs/<data name>`` (``-eval`` for evaluate) unless --out says otherwise."""
    if config.out:
        return Path(config.out)
    stem = Path(config.data).stem if config.data not in ("adult", "digits") else config.data
    return Path("runs") / (stem + ("-eval" if config.command == "evaluate" else ""))


def _criterion(label_smoothing: float):
    def per_sample_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)

    return per_sample_cross_entropy


def build_setup(
    config: RunConfig,
    dataset: Dataset,
    device: torch.device,
    generator: torch.Generator,
    spec: dict[str, Any],
) -> TrainingSetup:
    """The default training setup, before plugins edit it."""
    config.resolve_defaults(len(dataset.train))
    base = build_model(spec).to(device)
    model = torch.compile(base) if config.compile else base
    return TrainingSetup(
        config=config,
        dataset=dataset,
        base_model=base,
        model_spec=spec,
        model=model,
        optimizer=make_optimizer(config, [p for p in base.parameters() if p.requires_grad]),
        criterion=_criterion(config.label_smoothing),
        batch_sampler=ShuffledBatches(num_rows=len(dataset.train), batch_size=config.batch_size),
        device=device,
        generator=generator,
        grad_clip=config.grad_clip,
        use_amp=device.type == "cuda",
    )


def train_variant(
    config: RunConfig,
    dataset: Dataset,
    *,
    device: torch.device | None = None,
    sample_weights: torch.Tensor | None = None,
    progress: bool = False,
) -> tuple[nn.Module, TrainResult]:
    """Train the run's model again with no plugins (a baseline to compare a mitigation against)."""
    device = device or resolve_device(config.device)
    generator = seed_everything(config.seed)
    spec = model_spec(
        name=config.model,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=config.hidden,
        channels=config.channels,
        dropout=config.dropout,
    )
    setup = build_setup(config, dataset, device, generator, spec)
    setup.sample_weights = sample_weights
    attach_scheduler(setup)
    result = train(setup, progress=progress, desc="baseline (no plugins)")
    return setup.base_model.eval(), result


def efficiency_section(
    model: nn.Module, dataset: Dataset, device: torch.device, config: RunConfig, result: TrainResult | None
) -> Section:
    """Training cost, memory, size, FLOPs, latency, and compression when asked."""
    section = Section("efficiency", "Efficiency")
    model.eval()
    x_test = dataset.test.x
    if result is not None:
        section.add_metric("train_wall_s", result.wall_time_s)
        section.add_metric("train_time_s", result.train_time_s)
        section.add_metric("epoch_time_s", result.train_time_s / max(len(result.history), 1))
        section.add_metric("train_samples_per_s", result.samples_seen / max(result.train_time_s, 1e-9))
        section.add_metric("epochs_run", len(result.history))
        section.add_metric("steps", result.steps)
    section.add_metric("peak_rss_mb", efficiency.peak_rss_mb())
    if device.type == "cuda":
        section.add_metric("cuda_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20)
    section.add_metric("params", count_parameters(model))
    section.add_metric("model_size_bytes", efficiency.model_size_bytes(model))
    if len(x_test):
        section.add_metric("flops_per_sample", efficiency.flops_per_sample(model, x_test[:1].to(device)))
        p50, p95 = efficiency.latency_ms(model, x_test[:1].to(device))
        section.add_metric("latency_ms_p50", p50)
        section.add_metric("latency_ms_p95", p95)
        p50, p95 = efficiency.latency_ms(model, x_test[:256].to(device), repeats=20)
        section.add_metric("latency_ms_b256_p50", p50)
        section.add_metric("latency_ms_b256_p95", p95)
        if config.compress:
            rows, metrics = efficiency.compression_rows(model, x_test, dataset.test.y, config.compress)
            for name, value in metrics.items():
                section.metrics[name] = value
            section.tables.append(
                Table(
                    "Compression (CPU, batch 256)",
                    ["model", "size (bytes)", "latency p50 (ms)", "test accuracy"],
                    rows,
                )
            )
            section.notes.append(
                "prune: 50% of Linear/Conv weights by global magnitude; size counts sparse storage. "
                "quantize: dynamic int8 Linear layers."
            )
    section.notes.append(f"device {device}; latency is one forward pass, p50/p95 over repeated runs")
    return section


def _checkpoint_bytes(
    spec: dict[str, Any], model: nn.Module, dataset: Dataset, config: RunConfig, metadata_: dict[str, Any]
) -> bytes:
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _collect_sections(pm: pluggy.PluginManager, ctx: EvalContext) -> list[Section]:
    impls = pm.hook.audit_evaluate.get_hookimpls()
    sections: list[Section] = []
    # One plugin at a time (pluggy's subset callers) so the bar can say which audit is running.
    with progress_bar(total=len(impls), desc="audit", unit="plugin", enabled=not ctx.config.quiet) as bar:
        for impl in impls:
            bar.set_postfix_str(impl.plugin_name)
            only = pm.subset_hook_caller(
                "audit_evaluate", remove_plugins=[i.plugin for i in impls if i is not impl]
            )
            sections += [s for s in only(ctx=ctx) if s is not None]
            bar.update()
    return sorted(
        sections,
        key=lambda s: (
            ["privacy", "fairness", "robustness"].index(s.name)
            if s.name in ("privacy", "fairness", "robustness")
            else 99
        ),
    )


def _run_info(
    config: RunConfig, dataset: Dataset, device: torch.device, started: dt.datetime
) -> dict[str, Any]:
    config_json = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return {
        "name": default_out_dir(config).name,
        "command": config.command,
        "command_line": shlex.join(config.command_line) if config.command_line else shlex.join(sys.argv),
        "seed": config.seed,
        "device": str(device),
        "started_at": started.isoformat(timespec="seconds"),
        "versions": package_versions(),
        "config": config.to_dict(),
        "config_sha256": _sha256(config_json.encode()),
        "data": {
            "name": dataset.name,
            "source": config.data,
            "sha256": dataset.fingerprint,
            "kind": dataset.kind,
            "split": dataset.split_source,
            "rows": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
            "target": dataset.target,
            "classes": dataset.classes,
            "positive_label": dataset.positive_label,
            "sensitive": dataset.sensitive,
            "features": len(dataset.feature_names),
            "missing_values": dataset.missing_counts,
        },
    }


def write_outputs(out_dir: Path, report: Report, model_bytes: bytes | None) -> dict[str, Any]:
    """Write model.pt, report.json and its renderings (HTML, Markdown, model card), each atomically."""
    data = report.to_dict()
    files = render_beside(data, out_dir / "report.json")  # rendered first: a failure leaves no file behind
    if model_bytes is not None:
        write_atomic(out_dir / "model.pt", model_bytes)
    write_atomic(out_dir / "report.json", json.dumps(data, indent=2, allow_nan=False))
    for path, text in files.values():
        write_atomic(path, text)
    return data


def run_train(config: RunConfig, pm: pluggy.PluginManager) -> RunOutcome:
    """``audit train``: train, audit, and write the report and model."""
    started = dt.datetime.now(dt.timezone.utc)
    pm.hook.audit_configure(config=config)
    config.resolve_defaults()
    check_policy_early(config, pm)
    generator = seed_everything(config.seed)
    dataset = load_dataset(config)
    config.resolve_defaults(len(dataset.train))
    device = resolve_device(config.device)
    spec = model_spec(
        name=config.model,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=config.hidden,
        channels=config.channels,
        dropout=config.dropout,
    )
    setup = build_setup(config, dataset, device, generator, spec)
    pm.hook.audit_prepare_training(setup=setup)
    attach_scheduler(setup)
    result = train(
        setup, after_epoch=lambda state: pm.hook.audit_after_epoch(state=state), progress=not config.quiet
    )
    pm.hook.audit_after_training(setup=setup)
    model = setup.base_model.eval()
    metadata_: dict[str, Any] = {}
    for extra in pm.hook.audit_checkpoint_metadata(setup=setup):
        metadata_.update(extra or {})
    ctx = build_context(
        config=config,
        dataset=dataset,
        model=model,
        device=device,
        training=result,
        artifacts=setup.artifacts,
        checkpoint_metadata=metadata_,
    )
    model_bytes = _checkpoint_bytes(setup.model_spec, model, dataset, config, metadata_)
    report = Report(run=_run_info(config, dataset, device, started))
    report.run["model_sha256"] = _sha256(model_bytes)
    perf = performance_section(ctx)
    perf.notes.extend(setup.notes)
    perf.warnings.extend(setup.warnings)
    report.add_section(perf)
    report.add_section(efficiency_section(model, dataset, device, config, result))
    for section in _collect_sections(pm, ctx):
        report.add_section(section)
    return _finish(config, report, model_bytes, pm)


def run_evaluate(config: RunConfig, pm: pluggy.PluginManager) -> RunOutcome:
    """``audit evaluate``: audit a saved model again, without training."""
    started = dt.datetime.now(dt.timezone.utc)
    checkpoint = load_checkpoint(config.model_path)
    schema = checkpoint["schema"]
    saved = checkpoint.get("config", {})
    if config.data is None:
        if schema.get("name") not in ("adult", "digits"):
            raise AuditError(
                f"the model was trained on {schema.get('name')!r}, not on built-in data; pass --data FILE with the rows to audit"
            )
        config.data = schema["name"]
    if not config.sensitive:
        config.sensitive = list(schema.get("sensitive", []))
    if config.data in ("adult", "digits") and config.data != schema.get("name"):
        raise AuditError(
            f"--data {config.data} does not match the model, which was trained on {schema.get('name')}"
        )
    for key in ("val_fraction", "test_fraction"):
        if key in saved:
            setattr(config, key, saved[key])
    if config.data in ("adult", "digits") and "seed" in saved:
        config.seed = saved["seed"]  # the built-in data's splits come from the training seed
    pm.hook.audit_configure(config=config)
    config.resolve_defaults()
    check_policy_early(config, pm)
    seed_everything(config.seed)
    dataset = load_dataset(config, schema=schema)
    if list(dataset.input_shape) != list(schema["input_shape"]):
        raise AuditError(
            f"data gives inputs of shape {tuple(dataset.input_shape)}; the model expects {tuple(schema['input_shape'])}"
        )
    device = resolve_device(config.device)
    model = build_model(checkpoint["spec"])
    try:
        model.load_state_dict(checkpoint["state_dict"])
    except RuntimeError:
        raise AuditError(
            f"model file {config.model_path} holds weights that do not fit its model recipe; the file is damaged"
        ) from None
    model = model.to(device).eval()
    ctx = build_context(
        config=config,
        dataset=dataset,
        model=model,
        device=device,
        training=None,
        artifacts={},
        checkpoint_metadata=checkpoint.get("metadata", {}),
    )
    report = Report(run=_run_info(config, dataset, device, started))
    report.run["model_sha256"] = _sha256(Path(config.model_path).read_bytes())
    report.run["model_path"] = config.model_path
    report.add_section(performance_section(ctx))
    report.add_section(efficiency_section(model, dataset, device, config, None))
    for section in _collect_sections(pm, ctx):
        report.add_section(section)
    return _finish(config, report, None, pm)


def check_policy_early(config: RunConfig, pm: pluggy.PluginManager) -> None:
    """Read ``--policy`` before any work, so a malformed policy or an unknown metric costs no training time."""
    if config.policy:
        from audit.gate import check_rule_metrics, load_policy

        rules, _ = load_policy(config.policy)
        check_rule_metrics(
            rules, policy_path=config.policy, metrics={}, declared=[s.name for s in collect_metric_specs(pm)]
        )


def finalize_report(report: Report, *, pm: pluggy.PluginManager, policy: str | None) -> None:
    """Add the compliance section and, with a policy, the gate section (then the verdicts per clause)."""
    specs = collect_metric_specs(pm)
    evidence = evidence_from_specs(report.metrics, specs)
    # Built before the gate so a policy can gate on compliance.* too, and again after it for the verdicts.
    refresh_compliance(report, evidence)
    if policy:
        from audit.gate import gate_report_in_place

        gate_report_in_place(report, policy_path=policy, declared=[s.name for s in specs])
        refresh_compliance(report, evidence)


def _finish(
    config: RunConfig, report: Report, model_bytes: bytes | None, pm: pluggy.PluginManager
) -> RunOutcome:
    out_dir = default_out_dir(config)
    finalize_report(report, pm=pm, policy=config.policy)
    data = write_outputs(out_dir, report, model_bytes)
    return RunOutcome(report=data, out_dir=out_dir)

"""Orchestrates one run: configure -> data -> training -> shared evaluation -> sections -> one report on disk."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pluggy
import torch
from torch import nn

from audit.checkpoint import (
    checkpoint_bytes,
    defaults_from_checkpoint,
    external_model,
    is_external,
    load_checkpoint,
    model_from_checkpoint,
    module_facts,
)
from audit.compliance import evidence_from_specs, refresh_compliance
from audit.config import RunConfig
from audit.data import Dataset, load_dataset, load_ready_dataset
from audit.distributed import World, process_group
from audit.efficiency import efficiency_section
from audit.engine import TrainingSetup, TrainResult, train
from audit.errors import AuditError
from audit.evaluation import EvalContext, build_context
from audit.gate import check_rule_metrics, gate_report_in_place, load_policy
from audit.models import ExportedModule, check_outputs
from audit.outputs import check_writable, default_out_dir, write_outputs
from audit.performance import performance_section
from audit.plugins import collect_metric_specs
from audit.progress import progress_bar
from audit.provenance import run_info, sha256_hex
from audit.report import Report, Section
from audit.signing import check_model_file, resolve_sign_key
from audit.training import (
    attach_scheduler,
    build_setup,
    distribute,
    model_spec_for,
    resolve_device,
    seed_everything,
)


@dataclass
class RunOutcome:
    """What a run produced: the report (as written) and where."""

    report: dict[str, Any]
    out_dir: Path
    model_bytes: bytes | None = None  # model.pt's bytes for a training run
    built: Report | None = None  # the report object, for the Python API
    model: nn.Module | None = None  # the model a training run trained


def configure(config: RunConfig, pm: pluggy.PluginManager) -> None:
    """Let every plugin read and check its options, then read the policy: bad input costs no data or training."""
    pm.hook.audit_configure(config=config)
    check_writable(default_out_dir(config), folder=True, what="--out")
    resolve_sign_key(config.sign_key)  # an unreadable key is refused now, not after training
    if config.policy:
        rules, _ = load_policy(config.policy)
        check_rule_metrics(rules, policy_path=config.policy, metrics={}, specs=collect_metric_specs(pm))


def plugin_defaults(config: RunConfig, pm: pluggy.PluginManager) -> dict[str, tuple[Any, str]]:
    """Core values the plugins' choices imply ({option: (value, plugin)}); two plugins disagreeing is an error."""
    merged: dict[str, tuple[Any, str]] = {}
    for impl in pm.hook.audit_config_defaults.get_hookimpls():
        for name, value in (impl.function(**{arg: config for arg in impl.argnames}) or {}).items():
            if name in merged and merged[name][0] != value:
                raise AuditError(
                    f"plugins {merged[name][1]} and {impl.plugin_name} set --{name.replace('_', '-')} to "
                    f"{merged[name][0]} and {value}; give --{name.replace('_', '-')} explicitly"
                )
            merged[name] = (value, impl.plugin_name)
    return merged


def collect_sections(pm: pluggy.PluginManager, ctx: EvalContext) -> list[Section]:
    """Every plugin's section (``audit_evaluate``), in the order the sections declare."""
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
    return sorted(sections, key=lambda s: s.order)


def train_with_plugins(setup: TrainingSetup, pm: pluggy.PluginManager) -> tuple[TrainResult, dict[str, Any]]:
    """Let plugins edit the setup, train, let them detach; return the result and the facts to save with the model."""
    pm.hook.audit_prepare_training(setup=setup)
    attach_scheduler(setup)
    distribute(setup)  # after the plugins: DDP wraps the final model, unless DP-SGD syncs its own gradients
    result = train(
        setup,
        after_epoch=lambda state: pm.hook.audit_after_epoch(state=state),
        progress=not setup.config.quiet and (setup.world is None or setup.world.is_main),
    )
    pm.hook.audit_after_training(setup=setup)
    metadata: dict[str, Any] = {}
    for extra in pm.hook.audit_checkpoint_metadata(setup=setup):
        metadata.update(extra or {})
    return result, metadata


def add_sections(report: Report, ctx: EvalContext, pm: pluggy.PluginManager, performance: Section) -> None:
    """The core's sections (performance, efficiency) and every plugin's, in that order of computation."""
    report.add_section(performance)
    report.add_section(efficiency_section(ctx.model, ctx.dataset, ctx.device, ctx.config, ctx.training))
    for section in collect_sections(pm, ctx):
        report.add_section(section)
    # --- compress helper: each --compress model audited like the original (audit/compression.py) ---
    if ctx.config.compress:
        from audit.compression import compression_section

        report.add_section(compression_section(ctx, pm, report))
    # --- end compress helper ---


def run_train(
    config: RunConfig,
    pm: pluggy.PluginManager,
    *,
    frame: pd.DataFrame | None = None,
    write: bool = True,
    audit_on_validation: bool = False,
) -> RunOutcome:
    """``audit train``: train, audit, and write the report and model (``frame``, ``write``: see run_evaluate).

    ``audit_on_validation``: every audit runs on the validation rows in place of the test rows (``audit tune``'s
    trials), so the test split is never scored.
    """
    started = dt.datetime.now(dt.timezone.utc)
    configure(config, pm)
    generator = seed_everything(config.seed)
    dataset = load_dataset(config, frame=frame)
    if audit_on_validation:
        dataset = validation_as_test(dataset)
    config.resolve(train_rows=len(dataset.train), plugin_defaults=plugin_defaults(config, pm))
    with process_group(resolve_device(config.device)) as world:
        return _train_and_audit(config, pm, dataset, generator, world, started=started, write=write)


def _train_and_audit(
    config: RunConfig,
    pm: pluggy.PluginManager,
    dataset: Dataset,
    generator: torch.Generator,
    world: World | None,
    *,
    started: dt.datetime,
    write: bool,
) -> RunOutcome:
    """Train (on every rank), then audit and write once (rank 0; the other ranks return an empty outcome)."""
    device = world.device if world is not None else resolve_device(config.device)
    setup = build_setup(config, dataset, device, generator, model_spec_for(config, dataset))
    setup.world = world
    result, metadata = train_with_plugins(setup, pm)
    if world is not None and not world.is_main:
        return RunOutcome(report={}, out_dir=default_out_dir(config))
    model = setup.base_model.eval()
    ctx = build_context(
        config=config,
        dataset=dataset,
        model=model,
        device=device,
        training=result,
        artifacts=setup.artifacts,
        checkpoint_metadata=metadata,
    )
    model_bytes = checkpoint_bytes(setup.model_spec, model, dataset, config, metadata)
    report = Report(run=run_info(config, dataset, device, started))
    report.run["model_sha256"] = sha256_hex(model_bytes)
    report.run.update(world_facts(result, world))
    performance = performance_section(ctx)
    performance.notes.extend(setup.notes)
    performance.warnings.extend(setup.warnings)
    add_sections(report, ctx, pm, performance)
    outcome = _finish(config, report, model_bytes, pm, write=write)
    outcome.model = model
    return outcome


def world_facts(result: TrainResult, world: World | None) -> dict[str, Any]:
    """The run block's training processes: ``world_size``, and for a distributed run its backend and throughput."""
    if world is None:
        return {"world_size": 1}
    rate = result.samples_seen / max(result.train_time_s, 1e-9)
    return {
        "world_size": world.world_size,
        "distributed": {
            "backend": "nccl" if world.device.type == "cuda" else "gloo",
            "train_samples_per_s": rate,
            "train_samples_per_s_per_rank": rate / world.world_size,
        },
    }


def validation_as_test(dataset: Dataset) -> Dataset:
    """The dataset with its validation rows in the test split's place (the test rows dropped, never scored)."""
    note = "audited on the validation split (a tuning trial): the test split was not used"
    return dataclasses.replace(dataset, test=dataset.val, notes=[*dataset.notes, note])


@dataclass
class Opened:
    """What an evaluate run audits: the data, the model, what its training recorded (None: unknown), run facts."""

    dataset: Dataset
    model: nn.Module
    metadata: dict[str, Any] | None
    run: dict[str, Any]


def run_evaluate(
    config: RunConfig,
    pm: pluggy.PluginManager,
    *,
    module: nn.Module | None = None,
    frames: dict[str, pd.DataFrame] | None = None,
    write: bool = True,
) -> RunOutcome:
    """``audit evaluate``: audit a saved model, or one trained elsewhere, without training.

    ``module`` and ``frames`` ({"data": ..., "train_data": ...}) come from the Python API; ``write=False``
    finalizes the report without writing files (the API's ``Report.write`` writes them later).
    """
    started = dt.datetime.now(dt.timezone.utc)
    frames = frames or {}
    if is_external(config, module_given=module is not None):
        opened = _open_external(config, pm, module, frames)
    else:
        opened = _open_saved(config, pm, frames)
    device = resolve_device(config.device)
    ctx = build_context(
        config=config,
        dataset=opened.dataset,
        model=opened.model.to(device),
        device=device,
        training=None,
        artifacts={},
        checkpoint_metadata=opened.metadata or {},
        training_known=opened.metadata is not None,
    )
    report = Report(run=run_info(config, opened.dataset, device, started))
    report.run.update(opened.run)
    add_sections(report, ctx, pm, performance_section(ctx))
    return _finish(config, report, None, pm, write=write)


def _open_saved(config: RunConfig, pm: pluggy.PluginManager, frames: dict[str, pd.DataFrame]) -> Opened:
    """A model.pt written by 'audit train': its recipe, weights, preprocessing and training facts."""
    checkpoint = load_checkpoint(config.model_path)
    model_check = check_model_file(config.model_path)  # against the report.json beside it, if any
    defaults_from_checkpoint(config, checkpoint)
    configure(config, pm)
    seed_everything(config.seed)
    schema = checkpoint["schema"]
    dataset = load_dataset(
        config, schema=schema, frame=frames.get("data"), train_frame=frames.get("train_data")
    )
    if list(dataset.input_shape) != list(schema["input_shape"]):
        raise AuditError(
            f"data gives inputs of shape {tuple(dataset.input_shape)}; the model expects "
            f"{tuple(schema['input_shape'])}"
        )
    model = model_from_checkpoint(checkpoint, config.model_path, trusted_factory=config.model_factory)
    run = {
        "model_sha256": sha256_hex(Path(config.model_path).read_bytes()),
        "model_path": config.model_path,
        "model_check": model_check,
    }
    return Opened(dataset, model, checkpoint.get("metadata", {}), run)


def _open_external(
    config: RunConfig, pm: pluggy.PluginManager, module: nn.Module | None, frames: dict[str, pd.DataFrame]
) -> Opened:
    """A model trained elsewhere, on data whose columns are its inputs; how it was trained is unknown."""
    configure(config, pm)
    seed_everything(config.seed)
    dataset = load_ready_dataset(config, frame=frames.get("data"), train_frame=frames.get("train_data"))
    shape = {"input_shape": dataset.input_shape, "num_classes": dataset.num_classes}
    if module is not None:
        check_outputs(
            module, what="the model", input_shape=shape["input_shape"], classes=shape["num_classes"]
        )
        model, facts = module.eval(), module_facts(module)
    else:
        model, facts = external_model(config, **shape)
    if config.compress and isinstance(model, (torch.jit.ScriptModule, ExportedModule)):
        raise AuditError(
            f"--compress {','.join(config.compress)} cannot apply to a TorchScript or torch.export program "
            "(quantizing and pruning rebuild a module's layers); leave --compress out"
        )
    run = {
        "model_sha256": facts["sha256"],
        "model_path": config.program or config.weights,
        "model_source": facts,
    }
    return Opened(dataset, model, None, run)


def finalize_report(report: Report, *, pm: pluggy.PluginManager, policy: str | None) -> None:
    """Add the compliance section and, with a policy, the gate section; mark each section's headline metrics."""
    specs = collect_metric_specs(pm)
    evidence = evidence_from_specs(report.metrics, specs)
    # Built before the gate so a policy can gate on compliance.* too, and again after it for the verdicts.
    refresh_compliance(report, evidence)
    if policy:
        gate_report_in_place(report, policy_path=policy, specs=specs)
        refresh_compliance(report, evidence)
    report.mark_headlines(specs)


def _finish(
    config: RunConfig,
    report: Report,
    model_bytes: bytes | None,
    pm: pluggy.PluginManager,
    *,
    write: bool = True,
) -> RunOutcome:
    sign_key = resolve_sign_key(config.sign_key)  # --sign-key, else $AUDIT_SIGN_KEY; None: unsigned
    out_dir = default_out_dir(config)
    finalize_report(report, pm=pm, policy=config.policy)
    if not write:  # the API: the caller writes later (Report.write), or never
        return RunOutcome(report=report.to_dict(), out_dir=out_dir, model_bytes=model_bytes, built=report)
    written = write_outputs(out_dir, report, model_bytes, sign_key)
    return RunOutcome(report=written, out_dir=out_dir, model_bytes=model_bytes, built=report)

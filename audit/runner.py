"""Orchestrates one run: data -> model -> hooks -> training -> shared evaluation -> one report on disk."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy

from audit.checkpoint import checkpoint_bytes, load_checkpoint
from audit.compliance import collect_metric_specs, evidence_from_specs, refresh_compliance
from audit.config import RunConfig
from audit.data import load_dataset
from audit.efficiency import efficiency_section
from audit.engine import train
from audit.errors import AuditError
from audit.evaluation import EvalContext, build_context, performance_section
from audit.models import build_model, model_spec
from audit.outputs import default_out_dir, write_outputs
from audit.progress import progress_bar
from audit.provenance import run_info, sha256_hex
from audit.report import Report, Section
from audit.training import attach_scheduler, build_setup, resolve_device, seed_everything

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a run produced: the report (as written) and where."""

    report: dict[str, Any]
    out_dir: Path


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
    model_bytes = checkpoint_bytes(setup.model_spec, model, dataset, config, metadata_)
    report = Report(run=run_info(config, dataset, device, started))
    report.run["model_sha256"] = sha256_hex(model_bytes)
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
    report = Report(run=run_info(config, dataset, device, started))
    report.run["model_sha256"] = sha256_hex(Path(config.model_path).read_bytes())
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

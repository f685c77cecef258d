"""The compressed models' audit: each --compress model audited like the original, and the change, per metric.

Every compressed model gets its own ``EvalContext`` and goes through the core's performance section and every
plugin's ``audit_evaluate`` (the core names no plugin); its metrics come back as ``compression.<kind>.<metric>``
and the change from the original as ``compression.<kind>.change.<metric>`` with an interval where one is possible.
The section's payload holds the numbers; its tables render them.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pluggy
import torch
from torch import nn

from audit.efficiency import prune_magnitude, quantize_dynamic_int8
from audit.evaluation import EvalContext, build_context
from audit.groups import group_labels, group_masks, group_metric, sensitive_features
from audit.intervals import CONFIDENCE, clopper_pearson
from audit.performance import performance_section
from audit.progress import progress_bar
from audit.report import MetricSpec, Report, Section, Table, interval_base

SECTION = "compression"
SECTION_ORDER = 21  # right after efficiency, whose table measures the same models' size and latency
LABELS = {"quantize": "int8", "prune": "pruned"}
# The compressed performance section refits the reference on the same rows: the same numbers, not the model's.
SKIPPED_PREFIXES = ("performance.reference_",)
HEADLINE = "performance.accuracy"  # its change leads the section's part of the summary and model card
PAIRED = "paired exact"
MARGINAL = "from both intervals"
INTERVAL_TAGS = {PAIRED: "paired, 95%", MARGINAL: "both 95% intervals, >= 90%"}
ATTACK_GRADIENTS = {
    "quantize": "straight-through: values of the int8 model, input gradients of its float shadow "
    "(int8 weights dequantised, float activations)",
    "prune": "the pruned model's own gradients",
}


class StraightThrough(nn.Module):
    """The int8 model's outputs with its float shadow's input gradients (BPDA, Athalye et al. 2018).

    Dynamic int8 Linear layers have no autograd, so an attack steps along the shadow's gradient while every
    prediction, and so every attack's success, is the real int8 model's.
    """

    def __init__(self, exact: nn.Module, shadow: nn.Module) -> None:
        super().__init__()
        self.exact = exact
        self.shadow = shadow

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The exact model's output; under autograd, shaped to carry the shadow's gradient."""
        if not (torch.is_grad_enabled() and x.requires_grad):
            return self.exact(x)
        with torch.no_grad():
            exact = self.exact(x.detach())
        approx = self.shadow(x)
        return approx + (exact - approx).detach()


def float_shadow(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose Linear weights are ``quantized``'s int8 weights, dequantised."""
    shadow = copy.deepcopy(model).cpu().eval()
    int8_layers = dict(quantized.named_modules())
    with torch.no_grad():
        for name, layer in shadow.named_modules():
            if isinstance(layer, nn.Linear) and callable(getattr(int8_layers.get(name), "weight", None)):
                layer.weight.copy_(int8_layers[name].weight().dequantize())
    return shadow


@dataclass
class Candidate:
    """One compressed model as the audit sees it: what runs (``model``) on which device, and how attacks see it."""

    kind: str
    model: nn.Module
    device: torch.device

    @property
    def label(self) -> str:
        """The table's name for it: int8 or pruned."""
        return LABELS[self.kind]


def compressed_models(model: nn.Module, kinds: list[str], device: torch.device) -> list[Candidate]:
    """Each requested compression of ``model``: int8 on the CPU (its only kernels), pruned where the model runs."""
    candidates = []
    for kind in kinds:
        if kind == "quantize":
            int8 = quantize_dynamic_int8(model)
            wrapped = StraightThrough(int8, float_shadow(model, int8)).eval()
            candidates.append(Candidate(kind, wrapped, torch.device("cpu")))
        elif kind == "prune":
            pruned, _ = prune_magnitude(model)
            candidates.append(Candidate(kind, pruned.to(device).eval(), device))
    return candidates


def compressed_context(ctx: EvalContext, candidate: Candidate) -> EvalContext:
    """The compressed model's context: the same data, seed and training facts, no training run to compare with.

    ``training=None`` is what ``audit evaluate`` of a saved model sees: the plugins audit the model and skip
    their retrained baselines; ``artifacts`` are shared, so a plugin may reuse what it cached for the original.
    """
    config = dataclasses.replace(ctx.config, quiet=True, sources=dict(ctx.config.sources))
    return build_context(
        config=config,
        dataset=ctx.dataset,
        model=candidate.model,
        device=candidate.device,
        training=None,
        artifacts=ctx.artifacts,
        checkpoint_metadata=ctx.checkpoint_metadata,
        training_known=ctx.training_known,
    )


def audit_candidate(ctx: EvalContext, pm: pluggy.PluginManager, candidate: Candidate) -> dict[str, Any]:
    """Audit one compressed model like the original: its metrics, warnings, test predictions and cost."""
    started = time.perf_counter()
    compressed = compressed_context(ctx, candidate)
    sections = [performance_section(compressed)]
    sections += [s for s in pm.hook.audit_evaluate(ctx=compressed) if s is not None]
    metrics = {
        name: value
        for section in sections
        for name, value in section.metrics.items()
        if not name.startswith(SKIPPED_PREFIXES)
    }
    return {
        "kind": candidate.kind,
        "label": candidate.label,
        "device": str(candidate.device),
        "attack_gradients": ATTACK_GRADIENTS[candidate.kind],
        "metrics": metrics,
        "warnings": [w for section in sections for w in section.warnings],
        "sections": [section.name for section in sections],
        "predictions": compressed.test_pred,
        "seconds": time.perf_counter() - started,
    }


def paired_change(
    before: np.ndarray, after: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[float, float, float, int, int]:
    """Change in accuracy on the same rows, with a simultaneous exact interval from the discordant rows.

    Only rows whose correctness changed move the accuracy: ``gained`` (wrong -> right) and ``lost``
    (right -> wrong), change = (gained - lost) / n. Each rate gets a Clopper-Pearson interval at
    1 - alpha/2, so both hold together with >= ``confidence`` (Bonferroni) and the change lies in
    [low(gained) - high(lost), high(gained) - low(lost)]: exact, no normal approximation, valid for any n.
    """
    n = len(before)
    gained, lost = int((~before & after).sum()), int((before & ~after).sum())
    level = 1 - (1 - confidence) / 2
    gained_low, gained_high = clopper_pearson(gained, n, level)
    lost_low, lost_high = clopper_pearson(lost, n, level)
    change = (gained - lost) / n if n else float("nan")
    return change, gained_low - lost_high, gained_high - lost_low, gained, lost


def paired_rows(ctx: EvalContext, predictions: torch.Tensor) -> list[dict[str, Any]]:
    """Accuracy change overall and in every sensitive group, each with its paired exact interval."""
    y = ctx.test_y.numpy()
    before, after = ctx.test_pred.numpy() == y, predictions.numpy() == y
    scopes = [("performance.accuracy", None, "all", np.ones(len(y), dtype=bool))]
    for feature, columns in sensitive_features(ctx.dataset.sensitive):
        for group, mask in group_masks(group_labels(ctx.dataset.test.groups, columns)):
            scopes.append((group_metric(feature, group, "accuracy"), feature, group, mask))
    rows = []
    for metric, feature, group, mask in scopes:
        change, low, high, gained, lost = paired_change(before[mask], after[mask])
        rows.append(
            {
                "metric": metric,
                "area": "performance",
                "feature": feature,
                "group": group,
                "rows": int(mask.sum()),
                "original": float(before[mask].mean()) if mask.any() else None,
                "compressed": float(after[mask].mean()) if mask.any() else None,
                "change": change,
                "ci_low": low,
                "ci_high": high,
                "gained": gained,
                "lost": lost,
            }
        )
    return rows


def change_rows(original: dict[str, Any], compressed: dict[str, Any]) -> list[dict[str, Any]]:
    """compressed - original for every point metric both have; an interval where both carry one.

    Each side's interval holds with 95%, so both hold together with >= 90% (Bonferroni, whatever their
    dependence) and the change lies in [low(compressed) - high(original), high(compressed) - low(original)].
    """
    rows = []
    for name, value in compressed.items():
        old = original.get(name)
        if interval_base(name) is not None or not _finite(value) or not _finite(old):
            continue
        bounds = [original.get(f"{name}{s}") for s in (".ci_low", ".ci_high")]
        bounds += [compressed.get(f"{name}{s}") for s in (".ci_low", ".ci_high")]
        has_interval = all(_finite(b) for b in bounds)
        rows.append(
            {
                "metric": name,
                "area": name.split(".", 1)[0],
                "original": old,
                "compressed": value,
                "change": value - old,
                "ci_low": bounds[2] - bounds[1] if has_interval else None,
                "ci_high": bounds[3] - bounds[0] if has_interval else None,
                "interval": MARGINAL if has_interval else None,
            }
        )
    return rows


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def compression_payload(
    ctx: EvalContext, pm: pluggy.PluginManager, original: dict[str, Any]
) -> dict[str, Any]:
    """Audit every compressed model and compare it with the original's metrics (``original``): the section's data."""
    candidates = compressed_models(ctx.model, list(ctx.config.compress), ctx.device)
    models = []
    with progress_bar(
        total=len(candidates), desc="compressed audits", unit="model", enabled=not ctx.config.quiet
    ) as bar:
        for candidate in candidates:
            audited = audit_candidate(ctx, pm, candidate)
            predictions = audited.pop("predictions")
            paired = paired_rows(ctx, predictions)
            changes = {row["metric"]: row for row in change_rows(original, audited["metrics"])}
            for row in paired:  # the paired interval replaces the marginal one where the rows are known
                changes[row["metric"]] = {**row, "interval": PAIRED}
            models.append({**audited, "changes": list(changes.values())})
            bar.update()
    return {"confidence": CONFIDENCE, "models": models}


def compression_section(ctx: EvalContext, pm: pluggy.PluginManager, report: Report) -> Section:
    """The compressed models' audit beside the original's (``report``: the sections measured so far)."""
    section = Section(SECTION, "Compressed models: the same audit", order=SECTION_ORDER)
    section.data = compression_payload(ctx, pm, report.metrics)
    section.data["titles"] = {s.name: s.title for s in report.sections}
    add_metrics(section)
    render_tables(section)
    known = {w for s in report.sections for w in s.warnings}
    for model in section.data["models"]:
        section.warnings += [f"{model['label']}: {w}" for w in model["warnings"] if w not in known]
    section.notes += method_notes(section.data)
    section.summary = summary_lines(section.data)
    return section


def add_metrics(section: Section) -> None:
    """``compression.<kind>.<metric>`` as each compressed audit measured it; ``.change.<metric>`` with intervals."""
    for model in section.data["models"]:
        kind = model["kind"]
        for name, value in model["metrics"].items():
            section.add_metric(f"{kind}.{name}", value)
        for row in model["changes"]:
            section.add_metric(f"{kind}.change.{row['metric']}", row["change"])
            if row["interval"] is not None:
                section.add_metric(f"{kind}.change.{row['metric']}.ci_low", row["ci_low"])
                section.add_metric(f"{kind}.change.{row['metric']}.ci_high", row["ci_high"])


def render_tables(section: Section) -> None:
    """One table per audited area: the original, then each compressed model with its change and interval."""
    models = section.data["models"]
    by_metric: dict[str, dict[str, dict[str, Any]]] = {}
    for model in models:
        for row in model["changes"]:
            by_metric.setdefault(row["metric"], {})[model["kind"]] = row
    areas: dict[str, list[str]] = {}
    for metric, rows in by_metric.items():
        areas.setdefault(next(iter(rows.values()))["area"], []).append(metric)
    columns = ["metric", "original"]
    for model in models:
        columns += [model["label"], f"{model['label']} change", f"{model['label']} interval"]
    for area, metrics in areas.items():
        title = section.data["titles"].get(area, area)
        rows = [_table_row(metric, by_metric[metric], models) for metric in metrics]
        section.tables.append(
            Table(f"{title}: original vs {' vs '.join(m['label'] for m in models)}", columns, rows)
        )


def _table_row(metric: str, rows: dict[str, dict[str, Any]], models: list[dict[str, Any]]) -> list[Any]:
    first = next(iter(rows.values()))
    label = (
        metric
        if first.get("group") is None or first["feature"] is None
        else f"accuracy, {first['feature']}={first['group']}"
    )
    cells: list[Any] = [label, first["original"]]
    for model in models:
        row = rows.get(model["kind"])
        if row is None:
            cells += [None, None, None]
            continue
        interval = None
        if row["interval"] is not None:
            interval = f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}] {INTERVAL_TAGS[row['interval']]}"
        cells += [row["compressed"], row["change"], interval]
    return cells


def method_notes(data: dict[str, Any]) -> list[str]:
    """How each compressed model was audited and what its intervals mean."""
    notes = [
        f"{m['label']}: audited on {m['device']} in {m['seconds']:.1f} s; attacks use {m['attack_gradients']}"
        for m in data["models"]
    ]
    notes.append(
        "each compressed model is audited as 'audit evaluate' would audit it (the same rows and seeds, the "
        "original's training facts, no retrained baselines); a plugin that trains models of its own for the "
        "audit (reference models) trains them again unless it caches them in the shared artifacts"
    )
    notes.append(
        f"intervals of a change: '{PAIRED}' (accuracy overall and per group) counts the rows whose correctness "
        f"changed, each direction's rate bounded at {1 - (1 - data['confidence']) / 2:.1%} (Clopper-Pearson), "
        f"together {data['confidence']:.0%}; '{MARGINAL}' combines the two {data['confidence']:.0%} intervals "
        f"(together >= {1 - 2 * (1 - data['confidence']):.0%})"
    )
    return notes


def summary_lines(data: dict[str, Any]) -> list[str]:
    """Per compressed model: the accuracy change with its interval, and the metrics significantly worse."""
    lines = []
    for model in data["models"]:
        rows = {row["metric"]: row for row in model["changes"]}
        acc = rows.get("performance.accuracy")
        if acc is None:
            continue
        worse = [
            r["metric"]
            for r in model["changes"]
            if r["interval"] == PAIRED and r["metric"] != "performance.accuracy" and r["ci_high"] < 0
        ]
        line = (
            f"{model['label'].capitalize()}: test accuracy from {acc['original']:.4f} to {acc['compressed']:.4f} "
            f"(change {acc['change']:+.4f}, {data['confidence']:.0%} paired interval "
            f"[{acc['ci_low']:+.4f}, {acc['ci_high']:+.4f}])"
        )
        line += f"; accuracy fell significantly in {', '.join(worse)}." if worse else "."
        lines.append(line)
    return lines


def compression_specs(specs: list[MetricSpec]) -> list[MetricSpec]:
    """``compression.*.<metric>`` and ``compression.*.change.<metric>`` for every declared metric, same direction.

    Untagged: the compliance evidence is the released model's; the compressed models are measured beside it.
    No catch-all ``compression.*``: a policy's typo in a compressed metric's name is still refused at once.
    """
    derived = [
        MetricSpec(
            f"{SECTION}.*.change.*.group.*.accuracy",
            True,
            "fraction",
            "Change in a sensitive group's test accuracy after compression (paired exact interval)",
        ),
    ]
    for spec in specs:
        if spec.name.startswith(f"{SECTION}."):
            continue
        former = tuple(f"{SECTION}.*.{name}" for name in spec.former_names)
        derived.append(
            MetricSpec(
                f"{SECTION}.*.{spec.name}",
                spec.higher_is_better,
                spec.unit,
                f"{spec.description}, of a compressed model",
                former_names=former,
            )
        )
        derived.append(
            MetricSpec(
                f"{SECTION}.*.change.{spec.name}",
                spec.higher_is_better,
                spec.unit,
                f"Change after compression (compressed - original) of: {spec.description}",
                former_names=tuple(f"{SECTION}.*.change.{name}" for name in spec.former_names),
                headline=spec.name == HEADLINE,
            )
        )
    return derived

"""The fairness report section: a JSON-able payload from labels, decisions and groups, and the section rendered
from it (metrics, tables, figures, notes, plain-language summary). Shared by the plugin and ``audit decisions``.

Payload (``Section.data``; numbers are plain floats, NaN as None)::

    {"target": "binary" | "multiclass", "num_classes": int, "min_group_size": int,
     "intervals": {"method": "clopper-pearson" | "none", "level": 0.95 | None, "simultaneous": "bonferroni" | None},
     "constant_predictions": None | {"class": str, "share": float, "rows": int, "by": "model" | "decisions"},
     "features": {feature: {"columns": [...], "groups": [...], "sizes": [...],
                            "rates": {rate: [per group]}, "rate_ci": {rate: [[low per group], [high per group]]},
                            "summaries": {name: value}, "summary_ci": {name: [low, high]}}},
     "mitigation": None | {"method", "source": "training" | "checkpoint", "weights_range", "count_epsilon",
                           "strength", "accuracy", "baseline_accuracy", "accuracy_cost"},
     "baseline": None | {"summaries": {feature: {name: value}}},
     "postprocess": None | {"constraint", "feature", "status": "fitted" | "skipped" | "failed", "reason",
                            "accuracy", "summaries": {name: value}}}

Per-group rate intervals are marginal exact (Clopper-Pearson) intervals at ``level``; each summary's interval is
derived from intervals of the group rates it uses that hold simultaneously at ``level`` (Bonferroni), so it keeps
its level at no gap (see ``fairness_metrics``). ``constant_predictions`` is set when (nearly) every audited row got
one class (``audit.performance.predicts_one_class``): every gap is then near 0 whatever the model's fairness.

A feature with a single group has empty ``summaries``: a gap over one group is 0 by arithmetic, not by fairness,
so its summaries are left out and a gate on them fails closed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from audit.groups import group_labels, group_masks, group_metric, sensitive_features
from audit.intervals import clopper_pearson_arrays
from audit.performance import constant_predictions as one_class
from audit.report import Figure, Section, Series, Table, clean_number, metric_segment
from audit_plugins.fairness_metrics import (
    INTERVAL_METHODS,
    RATES,
    SUMMARIES,
    GroupAudit,
    accuracy_summary_intervals,
    audit_groups,
)

SECTION_ORDER = 40
MIN_GROUP_SIZE, INTERVALS = 30, "exact"
LEVEL = 0.95
FIGURE_RATES = ("selection_rate", "tpr", "fpr")
MITIGATIONS = {"reweight": "Kamiran-Calders reweighing"}
# --postprocess constraint -> the gap it closes, and that gap in words
CONSTRAINT_GAPS = {
    "demographic_parity": ("demographic_parity_difference", "demographic-parity difference"),
    "equalized_odds": ("equalized_odds_difference", "equalized-odds difference"),
}


def summary_metric(feature: str, name: str) -> str:
    """A between-group summary's metric name below its section: ``<feature>.<summary>``."""
    return f"{metric_segment(feature)}.{name}"


def compared_summaries(audit: GroupAudit) -> dict[str, float | None]:
    """The audit's between-group summaries as plain numbers; none for a single group (see the module docstring)."""
    return {name: clean_number(audit.summaries[name]) for name in SUMMARIES} if audit.comparable else {}


def audit_features(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.DataFrame,
    sensitive: Sequence[str],
    *,
    intervals: str,
) -> dict[str, GroupAudit]:
    """One group audit per sensitive column and, with several, one of their intersection."""
    return {
        feature: audit_groups(y_true, y_pred, group_labels(groups, columns), intervals=intervals, level=LEVEL)
        for feature, columns in sensitive_features(sensitive, intersection=True)
    }


def fairness_data(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.DataFrame,
    sensitive: Sequence[str],
    *,
    intervals: str,
    min_group_size: int,
    classes: Sequence[str] = ("negative", "positive"),
    by: str = "model",
) -> dict[str, Any]:
    """The section's payload for binary labels and decisions (1 = positive, named ``classes[1]``) and their groups."""
    features = {}
    for feature, columns in sensitive_features(sensitive, intersection=True):
        audit = audit_groups(y_true, y_pred, group_labels(groups, columns), intervals=intervals, level=LEVEL)
        entry = {"columns": list(columns), **audit.to_data()}
        if not audit.comparable:
            entry["summaries"], entry["summary_ci"] = {}, {}
        features[feature] = entry
    data = _payload("binary", 2, min_group_size, _interval_facts(intervals), features)
    data["constant_predictions"] = constant_predictions(y_pred, classes, by)
    return data


def _interval_facts(intervals: str) -> dict[str, Any]:
    if intervals not in INTERVAL_METHODS:
        raise ValueError(f"intervals must be one of {INTERVAL_METHODS}, got {intervals!r}")
    if intervals == "none":
        return {"method": "none", "level": None, "simultaneous": None}
    return {"method": "clopper-pearson", "level": LEVEL, "simultaneous": "bonferroni"}


def constant_predictions(y_pred: np.ndarray, classes: Sequence[str], by: str) -> dict[str, Any] | None:
    """The payload's ``constant_predictions``: the one class (nearly) every row got, its share; None otherwise."""
    constant = one_class(y_pred, list(classes))
    return None if constant is None else {**constant, "by": by}


def group_accuracy_data(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    groups: pd.DataFrame,
    sensitive: Sequence[str],
    *,
    num_classes: int,
    min_group_size: int,
    classes: Sequence[str] = (),
    by: str = "model",
) -> dict[str, Any]:
    """The section's payload for a multiclass target: accuracy per group with exact intervals, the worst, the gap."""
    correct = y_true == y_pred
    features = {}
    for feature, columns in sensitive_features(sensitive, intersection=True):
        masks = list(group_masks(group_labels(groups, columns)))
        hits = [int(correct[mask].sum()) for _, mask in masks]
        sizes = [int(mask.sum()) for _, mask in masks]
        features[feature] = {"columns": list(columns), **_accuracy_entry([g for g, _ in masks], hits, sizes)}
    data = _payload("multiclass", num_classes, min_group_size, _interval_facts("exact"), features)
    data["constant_predictions"] = constant_predictions(y_pred, classes, by)
    return data


def _payload(
    target: str, num_classes: int, min_group_size: int, intervals: dict[str, Any], features: dict[str, Any]
) -> dict[str, Any]:
    return {
        "target": target,
        "num_classes": num_classes,
        "min_group_size": min_group_size,
        "intervals": intervals,
        "constant_predictions": None,
        "features": features,
        "mitigation": None,
        "baseline": None,
        "postprocess": None,
    }


def _accuracy_entry(names: list[str], hits: list[int], sizes: list[int]) -> dict[str, Any]:
    accuracy = [h / n for h, n in zip(hits, sizes)]
    low, high = clopper_pearson_arrays(np.array(hits), np.array(sizes), LEVEL)
    entry: dict[str, Any] = {
        "groups": names,
        "sizes": sizes,
        "rates": {"accuracy": accuracy},
        "rate_ci": {"accuracy": [[float(v) for v in low], [float(v) for v in high]]},
        "summaries": {},
        "summary_ci": {},
    }
    if len(names) >= 2:
        worst = min(accuracy)
        entry["summaries"] = {"worst_group_accuracy": worst, "accuracy_difference": max(accuracy) - worst}
        bounds = accuracy_summary_intervals(np.array(hits), np.array(sizes), LEVEL)
        entry["summary_ci"] = {name: list(bound) for name, bound in bounds.items()}
    return entry


def fairness_section(data: dict[str, Any]) -> Section:
    """The fairness section rendered from its payload (``fairness_data`` or ``group_accuracy_data``, completed)."""
    section = Section("fairness", "Fairness", data=data, order=SECTION_ORDER)
    binary = data["target"] == "binary"
    if not binary:
        section.notes.append(
            f"selection, TPR and FPR gaps need a binary target; this target has {data['num_classes']} classes, so "
            "the section compares accuracy across groups"
        )
    for feature, entry in data["features"].items():
        (_add_feature if binary else _add_accuracy_feature)(section, feature, entry, data["min_group_size"])
    if data.get("constant_predictions"):
        section.warnings.insert(0, constant_warning(data["constant_predictions"]))
    section.notes.append(_interval_note(data["intervals"]))
    if data["mitigation"] is not None:
        _add_mitigation(section, data["mitigation"])
    if data["baseline"] is not None:
        _add_baseline(section, data)
    if data["postprocess"] is not None:
        _add_postprocess(section, data)
    section.summary = summary_lines(data)
    return section


def _add_feature(section: Section, feature: str, entry: dict[str, Any], min_group_size: int) -> None:
    if len(entry["groups"]) < 2:
        section.warnings.append(_one_group_warning(feature, entry))
    _add_summary_metrics(section, feature, entry)
    for i, group in enumerate(entry["groups"]):
        section.add_metric(group_metric(feature, group, "size"), entry["sizes"][i])
        for rate in RATES:
            section.add_metric(group_metric(feature, group, rate), entry["rates"][rate][i])
            if rate in entry["rate_ci"]:
                low, high = entry["rate_ci"][rate]
                section.add_metric(group_metric(feature, group, f"{rate}.ci_low"), low[i])
                section.add_metric(group_metric(feature, group, f"{rate}.ci_high"), high[i])
    section.warnings += _small_groups_warning(feature, entry, min_group_size)
    section.tables.append(_rates_table(feature, entry))
    if entry["summaries"]:
        section.tables.append(
            Table(
                f"{feature}: summaries",
                ["metric", "value", "95% low (simultaneous)", "95% high (simultaneous)"],
                [[n, v, *entry["summary_ci"].get(n, (None, None))] for n, v in entry["summaries"].items()],
            )
        )
    section.figures.append(_rates_figure(feature, entry))


def _add_accuracy_feature(section: Section, feature: str, entry: dict[str, Any], min_group_size: int) -> None:
    # Unlike the binary audit, a single group gets no per-group metrics here: there is nothing to compare them with.
    if len(entry["groups"]) < 2:
        section.warnings.append(_one_group_warning(feature, entry))
        return
    (low, high), rows = entry["rate_ci"]["accuracy"], []
    for i, group in enumerate(entry["groups"]):
        accuracy = entry["rates"]["accuracy"][i]
        section.add_metric(group_metric(feature, group, "size"), entry["sizes"][i])
        section.add_metric(group_metric(feature, group, "accuracy"), accuracy)
        section.add_metric(group_metric(feature, group, "accuracy.ci_low"), low[i])
        section.add_metric(group_metric(feature, group, "accuracy.ci_high"), high[i])
        rows.append([group, entry["sizes"][i], accuracy, low[i], high[i]])
    section.warnings += _small_groups_warning(feature, entry, min_group_size)
    _add_summary_metrics(section, feature, entry)
    section.tables.append(
        Table(f"{feature}: accuracy per group", ["group", "size", "accuracy", "95% low", "95% high"], rows)
    )


def _add_summary_metrics(section: Section, feature: str, entry: dict[str, Any]) -> None:
    for name, value in entry["summaries"].items():
        section.add_metric(summary_metric(feature, name), value)
        if name in entry["summary_ci"]:
            low, high = entry["summary_ci"][name]
            section.add_metric(summary_metric(feature, f"{name}.ci_low"), low)
            section.add_metric(summary_metric(feature, f"{name}.ci_high"), high)


def _rates_table(feature: str, entry: dict[str, Any]) -> Table:
    rows = []
    for i, group in enumerate(entry["groups"]):
        row: list[Any] = [group, entry["sizes"][i]]
        for rate in RATES:
            value = entry["rates"][rate][i]
            if rate in entry["rate_ci"]:
                low, high = (bound[i] for bound in entry["rate_ci"][rate])
                row.append("—" if value is None else f"{value:.3f} [{_fixed(low)}, {_fixed(high)}]")
            else:
                row.append(None if value is None else round(value, 4))
        rows.append(row)
    return Table(f"{feature}: per-group rates (95% exact interval)", ["group", "size", *RATES], rows)


def _rates_figure(feature: str, entry: dict[str, Any]) -> Figure:
    series = []
    for rate in FIGURE_RATES:
        bounds = entry["rate_ci"].get(rate)
        low, high = (list(bounds[0]), list(bounds[1])) if bounds else (None, None)
        series.append(Series(rate, list(entry["groups"]), list(entry["rates"][rate]), low, high))
    return Figure(f"{feature}: rates per group (95% intervals)", "bar", feature, "rate", series)


def _fixed(value: float | None) -> str:
    return "nan" if value is None else f"{value:.3f}"


def _interval_note(intervals: dict[str, Any]) -> str:
    if intervals.get("method") == "bootstrap":  # a report written before issue 13, re-rendered
        return (
            f"intervals: percentile bootstrap, {intervals.get('resamples')} resamples (the method before issue 13: "
            "its intervals of gaps miss the truth when the true gap is 0 or small)"
        )
    if intervals.get("method") != "clopper-pearson":
        return "no intervals were computed (--fairness-intervals none); definitions follow Fairlearn's"
    if intervals.get("simultaneous") is None:  # reports written before issue 13
        return "intervals: exact Clopper-Pearson 95% intervals per group"
    return (
        "intervals: each per-group rate has its exact Clopper-Pearson 95% interval (marginal: each covers its own "
        "rate 95% of the time); each summary (gap, ratio, worst group) has a simultaneous 95% interval, the range "
        "the summary takes when every group rate it uses lies in its exact interval at level 1 - 0.05/k (Bonferroni "
        "over those k rates), so it keeps 95% coverage at any true gap, 0 included; definitions follow Fairlearn's"
    )


def constant_warning(constant: dict[str, Any]) -> str:
    """The loud warning for (nearly) constant predictions: the gaps say nothing about fairness."""
    who = "the model predicts" if constant["by"] == "model" else "the recorded decisions are"
    return (
        f"ONE-CLASS PREDICTIONS: {who} '{constant['class']}' for {constant['share']:.1%} of the "
        f"{constant['rows']:,} audited rows: every gap below is (near) 0 because the "
        f"{'model' if constant['by'] == 'model' else 'decision'} is constant, not because it is fair; these "
        "fairness figures say nothing about fairness"
    )


def _one_group_warning(feature: str, entry: dict[str, Any]) -> str:
    only = entry["groups"][0] if entry["groups"] else "-"
    return (
        f"{feature}: only one group ('{only}') among the {sum(entry['sizes'])} audited rows, so its fairness "
        "metrics compare nothing and are left out"
    )


def _small_groups_warning(feature: str, entry: dict[str, Any], min_group_size: int) -> list[str]:
    """One warning per feature naming its groups with fewer than ``min_group_size`` audited rows (smallest first)."""
    small = sorted(
        (size, group) for group, size in zip(entry["groups"], entry["sizes"]) if size < min_group_size
    )
    if not small:
        return []
    shown = ", ".join(f"'{group}' ({size})" for size, group in small[:8])
    more = f" and {len(small) - 8} more" if len(small) > 8 else ""
    return [
        f"{feature}: {len(small)} group(s) have fewer than {min_group_size} audited rows, so their figures say "
        f"little: {shown}{more}"
    ]


def _method_name(mitigation: dict[str, Any]) -> str:
    """ "Kamiran-Calders reweighing", with its strength when the weights were moved towards 1."""
    method = MITIGATIONS.get(mitigation["method"], mitigation["method"])
    strength = mitigation.get("strength", 1.0)  # reports written before the option were fully reweighed
    return method if strength == 1.0 else f"{method} at strength {strength:.3g}"


def _add_mitigation(section: Section, mitigation: dict[str, Any]) -> None:
    method = _method_name(mitigation)
    if mitigation["source"] == "checkpoint":
        section.notes.append(f"the model was trained with {mitigation['method']} (from its checkpoint)")
        return
    for name in ("accuracy", "baseline_accuracy", "accuracy_cost"):
        section.add_metric(f"mitigation.{name}", mitigation[name])
    low, high = mitigation["weights_range"]
    section.notes.append(
        f"trained with {method} (weights {low:.3f} to {high:.3f}); the same model without it (plain core, no other "
        f"plugin) scores {mitigation['baseline_accuracy']:.4f} against {mitigation['accuracy']:.4f}"
    )
    if mitigation["count_epsilon"] is None:
        section.notes.append(
            "the reweighing weights come from exact group counts of the training rows; under --dp that "
            "is a small leak outside the DP-SGD guarantee (see the privacy section)"
        )


def _add_baseline(section: Section, data: dict[str, Any]) -> None:
    mitigation = data["mitigation"]
    rows = [["accuracy", mitigation["baseline_accuracy"], mitigation["accuracy"]]]
    for feature, summaries in data["baseline"]["summaries"].items():
        mitigated = data["features"][feature]["summaries"]
        for name, value in summaries.items():
            section.add_metric(f"baseline.{summary_metric(feature, name)}", value)
            rows.append([summary_metric(feature, name), value, mitigated.get(name)])
    section.tables.append(
        Table("Without and with mitigation", ["metric", "without", "with reweighing"], rows)
    )


def _add_postprocess(section: Section, data: dict[str, Any]) -> None:
    post, feature = data["postprocess"], data["postprocess"]["feature"]
    if post["status"] == "skipped":
        section.notes.append(f"--postprocess skipped: {post['reason']}")
        return
    if post["status"] == "failed":
        section.warnings.append(f"ThresholdOptimizer could not be fitted on {feature}: {post['reason']}")
        return
    section.add_metric("postprocessed.accuracy", post["accuracy"])
    model = data["features"][feature]["summaries"]
    rows = []
    for name, value in post["summaries"].items():
        section.add_metric(f"postprocessed.{summary_metric(feature, name)}", value)
        rows.append([summary_metric(feature, name), model.get(name), value])
    section.tables.append(
        Table(
            f"ThresholdOptimizer ({post['constraint']} on {feature}, fitted on the validation split): before and after",
            ["metric", "model", "post-processed"],
            rows,
        )
    )


def summary_lines(data: dict[str, Any]) -> list[str]:
    """Plain-language findings for a reader of the model card: per feature, then the mitigation and post-processing."""
    binary = data["target"] == "binary"
    lines = (
        []
        if binary
        else [f"The target has {data['num_classes']} classes, so groups are compared on accuracy."]
    )
    if data.get("constant_predictions"):
        lines.append(constant_warning(data["constant_predictions"]) + ".")
    for feature, entry in data["features"].items():
        if len(entry["groups"]) < 2:
            lines.append(_one_group_warning(feature, entry) + ".")
        else:
            lines.append((_binary_line if binary else _accuracy_line)(feature, entry))
    return lines + _mitigation_lines(data) + _postprocess_lines(data)


def _binary_line(feature: str, entry: dict[str, Any]) -> str:
    (low, low_group), (high, high_group) = _extremes(entry, "selection_rate")
    if _num(low) == _num(high):
        selection = f"selection rate {_num(low)} in every group (to two decimals)"
    else:
        selection = f"selection rates range from {_num(low)} ({low_group}) to {_num(high)} ({high_group})"
    parity = f"demographic-parity difference {_num(entry['summaries']['demographic_parity_difference'])}"
    if "demographic_parity_difference" in entry["summary_ci"]:
        parity += " (95% interval {} to {})".format(
            *map(_num, entry["summary_ci"]["demographic_parity_difference"])
        )
    worst, worst_group = _extremes(entry, "accuracy")[0]
    return f"{feature}: {selection}; {parity}; lowest group accuracy {_num(worst)} ({worst_group})."


def _accuracy_line(feature: str, entry: dict[str, Any]) -> str:
    (low, low_group), (high, high_group) = _extremes(entry, "accuracy")
    low_ci, high_ci = entry["summary_ci"]["worst_group_accuracy"]
    return (
        f"{feature}: accuracy ranges from {_num(low)} ({low_group}) to {_num(high)} ({high_group}); "
        f"worst-group accuracy {_num(low)} (95% interval {_num(low_ci)} to {_num(high_ci)})."
    )


def _mitigation_lines(data: dict[str, Any]) -> list[str]:
    mitigation = data["mitigation"]
    if mitigation is None:
        return []
    method = _method_name(mitigation)
    if mitigation["source"] == "checkpoint":
        return [f"The model was trained with {method} (recorded in its checkpoint)."]
    cost = mitigation["accuracy_cost"]
    lines = [
        f"Trained with {method}: accuracy {_num(mitigation['accuracy'], 3)} against "
        f"{_num(mitigation['baseline_accuracy'], 3)} without it, "
        + (f"a cost of {cost:.3f}." if cost >= 0 else f"a gain of {-cost:.3f}.")
    ]
    for feature, summaries in (data["baseline"] or {}).get("summaries", {}).items():
        if summaries:  # a feature with a single group has no gap to compare
            with_it = data["features"][feature]["summaries"]["demographic_parity_difference"]
            lines.append(
                f"{feature}: demographic-parity difference {_num(summaries['demographic_parity_difference'])} "
                f"without the mitigation, {_num(with_it)} with it."
            )
    return lines


def _postprocess_lines(data: dict[str, Any]) -> list[str]:
    post = data["postprocess"]
    if post is None or post["status"] != "fitted":
        return []
    gap, words = CONSTRAINT_GAPS[post["constraint"]]
    before, after = data["features"][post["feature"]]["summaries"].get(gap), post["summaries"].get(gap)
    line = f"Fairlearn's ThresholdOptimizer ({post['constraint']} on {post['feature']})"
    if before is not None and after is not None:
        line += f" moves the {words} from {_num(before)} to {_num(after)},"
    return [f"{line} at accuracy {_num(post['accuracy'], 3)}."]


def _extremes(entry: dict[str, Any], rate: str) -> list[tuple[float, str]]:
    """(lowest, highest) of a per-group rate with their groups, groups where it is undefined left out."""
    known = sorted((v, g) for v, g in zip(entry["rates"][rate], entry["groups"]) if v is not None)
    return [known[0], known[-1]]


def _num(value: float | None, digits: int = 2) -> str:
    return "undefined" if value is None else f"{value:.{digits}f}"

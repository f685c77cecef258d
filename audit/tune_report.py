"""``audit tune``'s report: the study as data (report.json) first, then its HTML rendering (audit/render)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import optuna

from audit.outputs import write_set
from audit.render.html import render_html
from audit.report import Figure, Report, Section, Series, Table
from audit.tune import Plan, complete_trials, constraints_of, feasible, study_name

log = logging.getLogger(__name__)
MIN_TRIALS_FOR_IMPORTANCE = 4  # fANOVA on fewer completed trials says nothing


def trial_row(trial: optuna.trial.FrozenTrial, plan: Plan) -> dict[str, Any]:
    """One trial as data: parameters, objective values (validation rows), rules failed, feasibility."""
    metrics = trial.user_attrs.get("metrics", {})
    return {
        "number": trial.number,
        "params": dict(trial.params),
        "objectives": {o.describe(): metrics.get(o.key) for o in plan.objectives},
        "pick_value": metrics.get(plan.pick.key),
        "feasible": all(c <= 0 for c in constraints_of(trial)),
        "failed_rules": list(trial.user_attrs.get("failed_rules", [])),
        "seconds": trial.duration.total_seconds() if trial.duration else None,
    }


def pareto_numbers(study: optuna.Study) -> list[int]:
    """Trial numbers on the Pareto front (Optuna's, which counts only feasible trials when constraints exist)."""
    return sorted(t.number for t in study.best_trials)


def importances(study: optuna.Study, plan: Plan) -> dict[str, float]:
    """Parameter importances for the first objective (optuna.importance), when enough trials completed."""
    if len(complete_trials(study)) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    try:
        sign = 1 if plan.objectives[0].direction == "maximize" else -1
        found = optuna.importance.get_param_importances(
            study,
            evaluator=optuna.importance.FanovaImportanceEvaluator(seed=plan.seed),
            target=lambda t: sign * t.values[0],
        )
    except (RuntimeError, ValueError) as exc:  # e.g. every trial drew the same value: nothing to apportion
        log.info("no parameter importances: %s", exc)
        return {}
    return {name: round(float(value), 4) for name, value in found.items()}


def study_data(study: optuna.Study, plan: Plan, chosen: dict[str, Any] | None) -> dict[str, Any]:
    """The tune section's payload: every figure and table of the report is a rendering of it."""
    trials = complete_trials(study)
    states = [t.state.name for t in study.trials]
    return {
        "study": {
            "name": study_name(plan),
            "storage": str(plan.study_path),
            "states": {s: states.count(s) for s in set(states)},
        },
        "objectives": [o.describe() for o in plan.objectives],
        "pick": plan.pick.describe(),
        "policy": plan.policy,
        "space": plan.space,
        "evaluated_on": "validation split (every trial); the test split is scored only by chosen/'s audit",
        "trials": [trial_row(t, plan) for t in trials],
        "pareto": pareto_numbers(study),
        "feasible": [t.number for t in feasible(trials)],
        "importances": importances(study, plan),
        "chosen": chosen,
    }


def _scatter(data: dict[str, Any]) -> Figure:
    """The first two objectives: feasible and infeasible trials apart, the Pareto front marked."""
    first, second = data["objectives"][0], data["objectives"][-1]
    groups = {"feasible": [], "infeasible": [], "Pareto front": []}
    for row in data["trials"]:
        point = (row["objectives"][first], row["objectives"][second])
        groups["feasible" if row["feasible"] else "infeasible"].append(point)
        if row["number"] in data["pareto"]:
            groups["Pareto front"].append(point)
    series = [
        Series(name, [p[0] for p in sorted(points)], [p[1] for p in sorted(points)])
        for name, points in groups.items()
        if points
    ]
    return Figure(f"{second} against {first} (validation split)", "scatter", first, second, series)


def _trials_table(data: dict[str, Any]) -> Table:
    names = sorted({name for row in data["trials"] for name in row["params"]})
    columns = ["trial", *data["objectives"], "feasible", "Pareto", "rules failed", *names]
    rows = [
        [
            row["number"],
            *row["objectives"].values(),
            "yes" if row["feasible"] else "no",
            "yes" if row["number"] in data["pareto"] else "",
            "; ".join(row["failed_rules"]),
            *(row["params"].get(n) for n in names),
        ]
        for row in data["trials"]
    ]
    return Table("Trials (figures on the validation split)", columns, rows)


def tune_section(data: dict[str, Any]) -> Section:
    """The report's one section, built from its payload."""
    section = Section(name="tune", title="Hyperparameter search", data=data, order=5)
    section.add_metric("trials", len(data["trials"]))
    section.add_metric("feasible_trials", len(data["feasible"]))
    section.add_metric("pareto_trials", len(data["pareto"]))
    section.figures.append(_scatter(data))
    section.tables.append(_trials_table(data))
    if data["importances"]:
        rows = [[name, value] for name, value in data["importances"].items()]
        section.tables.append(
            Table(
                f"Parameter importance for {data['objectives'][0]} (fANOVA)",
                ["parameter", "importance"],
                rows,
            )
        )
    section.notes.append(
        "Every trial was trained on the training split (validation for early stopping) and audited on the "
        "validation split; the test split was scored once, by the chosen model's full audit in chosen/."
    )
    chosen = data["chosen"]
    if chosen:
        section.summary.append(
            f"Chosen: trial {chosen['trial']} ({data['pick']}); its test-split audit is chosen/report.html."
        )
        # reports written before the chosen model's warnings were carried have none
        section.warnings += [f"chosen model, {w}" for w in chosen.get("warnings", [])]
    else:
        section.warnings.append("No trial passed the policy: nothing was chosen.")
    return section


def write_tune_report(out: Path, data: dict[str, Any]) -> list[Path]:
    """Write <out>/report.json and report.html as one set; return the paths."""
    report = Report(run={"command": "tune", "created": dt.datetime.now(dt.timezone.utc).isoformat()})
    report.add_section(tune_section(data))
    body = report.to_dict()
    contents = {
        "report.json": json.dumps(body, indent=2, allow_nan=False).encode(),
        "report.html": render_html(body).encode(),
    }
    write_set(out, contents)
    return [out / name for name in contents]

"""``audit tune``: a seeded multi-objective Optuna search whose trials are audited runs, scored on validation rows.

Every trial trains on the training split (validation for early stopping) and is audited with the validation rows
in the test split's place (``run_train(..., audit_on_validation=True)``); the release policy's rules are the
study's constraints. The test split is scored once, by the chosen model's full audit.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pluggy

from audit.config import RunConfig, build_config
from audit.errors import AuditError
from audit.gate import BOUNDS, GateResult, Rule, check_rule_metrics, evaluate_policy, load_policy
from audit.hookspecs import hookimpl
from audit.plugins import collect_metric_specs
from audit.progress import progress_bar
from audit.report import clean_number
from audit.runner import RunOutcome, run_train
from audit.tune_space import as_settings, suggest, trial_options

log = logging.getLogger(__name__)
MISSING_VIOLATION = (
    1e6  # a rule whose metric is missing fails closed, as the gate does, and is the worst miss
)
SQLITE_TIMEOUT_S = (
    60  # how long a process waits for another's write lock on the study file (sqlite3's is 5 s)
)
POLL_S = 0.5  # how often a process that must wait for the other processes' running trials looks again
# A RUNNING trial that never reached the objective (its process died between Optuna writing it and the first
# heartbeat, so Optuna's fail_stale_trials cannot see it) is taken for dead this long after it started.
ORPHAN_S = 60
WORKER_SEED_STRIDE = (
    100_003  # --jobs worker k's sampler seed is offset by k times this: distinct startup draws
)


@dataclass(frozen=True)
class Objective:
    """One objective: a direction and a metric (``bound``: the point value or a 95% interval end)."""

    direction: str  # "maximize" or "minimize"
    metric: str
    bound: str = "point"

    @property
    def key(self) -> str:
        """The metrics-map key the objective reads."""
        return self.metric + BOUNDS[self.bound]

    def describe(self) -> str:
        """The objective as written on the command line."""
        word = "max" if self.direction == "maximize" else "min"
        return f"{word} {self.metric}" + ("" if self.bound == "point" else f":{self.bound}")


@dataclass
class Plan:
    """Everything a tuning run needs, resolved from the command line before any training."""

    data: str
    target: str | None
    sensitive: list[str]
    objectives: list[Objective]
    pick: Objective
    space: dict[str, dict[str, Any]]
    rules: list[Rule]
    policy: str | None
    policy_sha256: str
    trials: int
    study_path: Path
    out: Path
    seed: int = 0
    quiet: bool = False
    settings: dict[str, Any] = field(default_factory=dict)  # fixed core settings (epochs, fractions)
    options: dict[str, Any] = field(default_factory=dict)  # fixed plugin options (dp, epsilon, robustness)


def parse_objective(text: str, what: str) -> Objective:
    """``max NAME`` / ``min NAME[:lower|upper]`` as an Objective; anything else is bad input."""
    words = text.split()
    if len(words) != 2 or words[0] not in ("max", "min"):
        raise AuditError(f"{what} {text.strip()!r}: expected 'max METRIC' or 'min METRIC[:lower|upper]'")
    metric, _, bound = words[1].partition(":")
    if bound and bound not in ("lower", "upper") or not metric:
        raise AuditError(f"{what} {text.strip()!r}: the bound after ':' must be lower or upper")
    return Objective("maximize" if words[0] == "max" else "minimize", metric, bound or "point")


def parse_objectives(text: str) -> list[Objective]:
    """A comma-separated list of objectives (one to four, no metric twice)."""
    objectives = [parse_objective(part, "--objectives") for part in text.split(",") if part.strip()]
    if not 1 <= len(objectives) <= 4 or len({o.key for o in objectives}) != len(objectives):
        raise AuditError(
            f"--objectives {text!r}: expected one to four distinct 'max|min METRIC' separated by commas"
        )
    return objectives


def check_metric_names(plan: Plan, pm: pluggy.PluginManager) -> None:
    """Refuse objective and --pick metrics no plugin declares (the nearest names named), before any training."""
    specs = collect_metric_specs(pm)
    for what, objective in [("--objectives", o) for o in plan.objectives] + [("--pick", plan.pick)]:
        rule = Rule(id=objective.describe(), metric=objective.metric, op=">=", value=0.0)
        check_rule_metrics([rule], policy_path=what, metrics={}, specs=specs)
    if plan.policy:
        check_rule_metrics(plan.rules, policy_path=plan.policy, metrics={}, specs=specs)


def read_policy(path: str | None) -> tuple[list[Rule], str]:
    """The policy's rules (no regression rules: a trial has no baseline) and its SHA-256."""
    if not path:
        return [], ""
    rules, digest = load_policy(path)
    regression = [r.id for r in rules if r.is_regression]
    if regression:
        raise AuditError(f"policy {path}, rule {regression[0]}: a baseline rule cannot constrain a search")
    return rules, digest


def study_name(plan: Plan) -> str:
    """A name derived from every setting that changes what a trial means, so a rerun continues the same study."""
    key = {
        "data": plan.data,
        "target": plan.target,
        "sensitive": plan.sensitive,
        "objectives": [o.describe() for o in plan.objectives],
        "space": plan.space,
        "policy": plan.policy_sha256,
        "seed": plan.seed,
        "settings": plan.settings,
        "options": plan.options,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return f"audit-tune-{digest[:12]}"


def run_config(
    plan: Plan, params: dict[str, Any], pm: pluggy.PluginManager, *, out: str | None = None
) -> RunConfig:
    """The RunConfig of one training run: the plan's fixed settings and options, then the trial's parameters."""
    plugin = {
        o.dest: o for group in pm.hook.audit_cli_options() for o in (group or []) if "train" in o.commands
    }
    values: dict[str, Any] = {dest: o.kwargs.get("default") for dest, o in plugin.items()}
    values |= plan.options
    if out is None:  # a trial: the cheaper settings tune_space.yaml names, unless the command set them
        values |= {k: v for k, v in trial_options().items() if k in plugin and k not in plan.options}
    core = {"data": plan.data, "target": plan.target, "sensitive": plan.sensitive, "seed": plan.seed}
    values |= {k: v for k, v in core.items() if v is not None} | plan.settings | as_settings(params)
    values |= {"command": "train", "quiet": out is None or plan.quiet, "out": out}
    if out is not None:
        values["policy"] = plan.policy
    sources = {key: "audit tune" for key in params}
    return build_config({k: v for k, v in values.items() if v is not None}, plugin, sources=sources)


def violations(rules: list[Rule], gate: GateResult) -> tuple[list[float], list[str]]:
    """One number per error-severity rule (> 0: failed, by how much; Optuna's convention) and the failures, named."""
    worst: dict[str, float] = {r.id: 0.0 for r in rules if r.severity == "error"}
    failed: list[str] = []
    for result in gate.results:
        if result.rule.id not in worst or result.verdict != "fail":
            continue
        rule = result.rule
        if result.value is None:
            amount = MISSING_VIOLATION
        elif rule.op in (">=", ">"):
            amount = max(rule.value - result.value, 1e-9)
        else:  # <=, <, == and != all fail by their distance from the threshold
            amount = max(abs(result.value - rule.value), 1e-9)
        worst[rule.id] = max(worst[rule.id], amount)
        value = "missing" if result.value is None else f"{result.value:.4g}"
        failed.append(f"{rule.id}: {result.metric} {value}, needs {rule.describe()}")
    return list(worst.values()), failed


def objective_values(plan: Plan, metrics: dict[str, Any]) -> list[float]:
    """The trial's objective values from its (validation) metrics; a missing one is bad input, named."""
    values = []
    for objective in plan.objectives:
        value = clean_number(metrics.get(objective.key))
        if value is None or not math.isfinite(value):
            raise AuditError(
                f"--objectives {objective.describe()!r}: the run produced no {objective.key}; "
                "check the metric name against 'audit metrics REPORT' and the options that produce it"
            )
        values.append(float(value))
    return values


class EpochPruner:
    """Reports each epoch's validation accuracy to a one-objective trial; stops the trial when the pruner says so."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    @hookimpl
    def audit_after_epoch(self, state: Any) -> None:
        """Report ``val_accuracy`` at this epoch; raise TrialPruned (Optuna marks the trial PRUNED) when told to."""
        value = state.record.get("val_accuracy")
        if value is not None:
            self.trial.report(float(value), state.epoch)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"epoch {state.epoch}: validation accuracy {value:.4f}")


def prunable(plan: Plan) -> bool:
    """Pruning runs only for the one objective the loop reports per epoch on the same rows: validation accuracy.
    (Optuna's Trial.report/should_prune raise NotImplementedError in multi-objective studies.)"""
    return [o.describe() for o in plan.objectives] == ["max performance.accuracy"]


def run_trial(trial: optuna.Trial, plan: Plan, pm: pluggy.PluginManager) -> list[float]:
    """Train and audit one trial on the validation rows; record its metrics and rule violations on the trial."""
    params = suggest(trial, plan.space)
    pruner = EpochPruner(trial) if prunable(plan) else None
    if pruner is not None:
        pm.register(pruner)
    try:
        outcome = run_train(run_config(plan, params, pm), pm, write=False, audit_on_validation=True)
    finally:
        if pruner is not None:
            pm.unregister(pruner)
    metrics = {k: clean_number(v) for k, v in outcome.built.metrics.items()}
    metrics = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
    constraints, failed = violations(plan.rules, evaluate_policy(plan.rules, metrics))
    for rule, amount in zip([r for r in plan.rules if r.severity == "error"], constraints):
        trial.set_constraint(rule.id, amount)  # the samplers and best_trials treat > 0 as infeasible
    trial.set_user_attr("constraints", constraints)
    trial.set_user_attr("failed_rules", failed)
    trial.set_user_attr("metrics", metrics)
    return objective_values(plan, metrics)


def constraints_of(trial: optuna.trial.FrozenTrial) -> list[float]:
    """The violations the trial recorded, one per error-severity rule (a trial that failed records none)."""
    return trial.user_attrs.get("constraints", [])


class StudyLock:
    """An exclusive POSIX ``flock`` on a file, taken and released explicitly (a no-op where fcntl is missing).

    ``release`` is idempotent: ``optimize`` releases it inside the trial, once Optuna has written the trial."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: Any = None

    def acquire(self) -> None:
        """Block until this process holds the lock."""
        try:
            import fcntl
        except ImportError:  # not POSIX: concurrent processes on one study are then the user's to avoid
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a")  # noqa: SIM115 - held across calls, closed by release
        fcntl.flock(handle, fcntl.LOCK_EX)
        self._handle = handle

    def release(self) -> None:
        """Give the lock back (closing the file drops the flock); nothing when not held."""
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()

    def __enter__(self) -> StudyLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def study_lock(plan: Plan) -> StudyLock:
    """The lock beside the study file that makes 'count the trials, then start one' atomic across processes."""
    return StudyLock(plan.study_path.with_name(f".{plan.study_path.name}.lock"))


def _storage(path: Path) -> optuna.storages.RDBStorage:
    """The SQLite storage with a heartbeat and a long busy timeout (several processes write one file: Optuna
    issue #820, 'database is locked'); two processes creating the same new file race on its schema, so the
    loser retries once the winner has made it."""
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(
                f"sqlite:///{path.resolve()}",
                engine_kwargs={"connect_args": {"timeout": SQLITE_TIMEOUT_S}},
                heartbeat_interval=2,
                grace_period=6,
            )
        except sqlalchemy.exc.SQLAlchemyError:
            if attempt == 4:
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def open_study(plan: Plan, *, worker: int = 0) -> optuna.Study:
    """Create or continue the study in SQLite; trials whose process died (no heartbeat) are marked FAIL.
    ``worker``: the --jobs worker's index, which offsets the sampler's seed."""
    plan.study_path.parent.mkdir(parents=True, exist_ok=True)
    warnings.filterwarnings(
        "ignore", category=optuna.exceptions.ExperimentalWarning
    )  # heartbeat: stable in use
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial's error is ours to report, once
    # The heartbeat lets a rerun (or another --jobs process) tell a dead trial from a running one.
    storage = _storage(plan.study_path)
    directions = [o.direction for o in plan.objectives]
    name = study_name(plan)
    done = 0
    try:
        done = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass
    # Seeded by the trials already held, so a resumed study does not redraw the first trials' parameters, and by
    # the worker's index, so --jobs workers that open the study together do not draw the same startup points.
    # (TPE's constant_liar, on by default, makes each worker treat the others' running trials as bad points.)
    sampler = optuna.samplers.TPESampler(
        seed=plan.seed + done + WORKER_SEED_STRIDE * worker,
        n_startup_trials=min(10, max(plan.trials // 3, 2)),
    )
    # Median stopping on validation accuracy after 5 trials and 2 epochs (one-objective studies only).
    pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        directions=directions,
        sampler=sampler,
        pruner=pruner if prunable(plan) else optuna.pruners.NopPruner(),
        load_if_exists=True,
    )
    optuna.storages.fail_stale_trials(study)
    return study


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The study's COMPLETE trials."""
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def trial_counts(study: optuna.Study) -> tuple[int, int]:
    """(COMPLETE, RUNNING) trials of the study, read from the storage."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return states.count(optuna.trial.TrialState.COMPLETE), states.count(optuna.trial.TrialState.RUNNING)


def fail_orphans(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials whose process died before the trial reached the objective (no ``pid`` user
    attribute ``ORPHAN_S`` after the start, so no heartbeat either); return their numbers."""
    now = dt.datetime.now()
    orphans = [
        t.number
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if "pid" not in t.user_attrs
        and t.datetime_start is not None
        and (now - t.datetime_start).total_seconds() > ORPHAN_S
    ]
    for number in orphans:
        study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
    return orphans


def _admit(study: optuna.Study, plan: Plan, lock: StudyLock) -> str:
    """Under the lock: 'done' when the study holds --trials COMPLETE trials, 'wait' while the running ones could
    still make it, else 'run' (the lock is then kept until the new trial is written)."""
    lock.acquire()
    try:
        optuna.storages.fail_stale_trials(
            study
        )  # a dead process's trial frees its place after the grace period
        fail_orphans(study)
        complete, running = trial_counts(study)
    except BaseException:
        lock.release()
        raise
    verdict = "done" if complete >= plan.trials else "wait" if complete + running >= plan.trials else "run"
    if verdict != "run":
        lock.release()
    return verdict


def optimize(study: optuna.Study, plan: Plan, pm: pluggy.PluginManager) -> None:
    """Run trials one at a time until the study holds exactly --trials COMPLETE ones, with any other processes on
    the same study file: a trial starts only while COMPLETE + RUNNING < --trials, checked and written under
    the study's lock (a pruned or failed trial frees its place; at most 3 x --trials attempts per process)."""
    lock = study_lock(plan)

    def objective(trial: optuna.Trial) -> list[float]:
        lock.release()  # Optuna has written this trial (RUNNING): the next process may count it now
        trial.set_user_attr(
            "pid", os.getpid()
        )  # it reached the objective: its heartbeat now tells if it lives
        return run_trial(trial, plan, pm)

    done = trial_counts(study)[0]
    with progress_bar(total=plan.trials, desc="tune", unit="trial", enabled=not plan.quiet) as bar:
        bar.update(done)
        attempts = 0
        while attempts < 3 * plan.trials:
            verdict = _admit(study, plan, lock)
            if verdict == "done":
                break
            if verdict == "wait":
                time.sleep(POLL_S)
                continue
            attempts += 1
            try:
                study.optimize(objective, n_trials=1, catch=())
            finally:
                lock.release()
            now = trial_counts(study)[0]
            bar.update(now - done)
            done = now
            bar.set_postfix_str(f"feasible {len(feasible(complete_trials(study)))}")
    optuna.storages.fail_stale_trials(study)


def feasible(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that pass every error-severity rule of the policy."""
    return [t for t in trials if all(c <= 0 for c in constraints_of(t))]


def pick_trial(
    trials: list[optuna.trial.FrozenTrial], pick: Objective, pareto: list[int]
) -> optuna.trial.FrozenTrial | None:
    """The feasible trial --pick prefers (ties: one on the Pareto front, then the lower number); None if none."""
    scored = [t for t in feasible(trials) if pick.key in t.user_attrs.get("metrics", {})]
    if not scored:
        return None
    sign = 1 if pick.direction == "maximize" else -1
    return max(
        scored, key=lambda t: (sign * t.user_attrs["metrics"][pick.key], t.number in pareto, -t.number)
    )


def nearest_trials(trials: list[optuna.trial.FrozenTrial], count: int = 3) -> list[optuna.trial.FrozenTrial]:
    """The trials closest to passing: fewest failed rules, then the smallest total violation."""

    def miss(trial: optuna.trial.FrozenTrial) -> tuple[int, float, int]:
        values = [c for c in constraints_of(trial) if c > 0]
        return len(values), sum(values), trial.number

    return sorted(trials, key=miss)[:count]


def train_chosen(plan: Plan, trial: optuna.trial.FrozenTrial, pm: pluggy.PluginManager) -> RunOutcome:
    """Retrain the chosen trial's parameters (train split; validation for early stopping) and audit it fully on
    the test split, with the policy, into <out>/chosen/: the only run of the tuning that scores the test rows."""
    config = run_config(plan, dict(trial.params), pm, out=str(plan.out / "chosen"))
    return run_train(config, pm)

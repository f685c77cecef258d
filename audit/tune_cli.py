"""``audit tune``'s command line: its arguments, the plan they make, and the run (search, choice, report, exit)."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy

from audit.config import parse_list
from audit.errors import AuditError

EXIT_OK, EXIT_NO_FEASIBLE = 0, 1


def add_subcommand(sub: Any) -> argparse.ArgumentParser:
    """Register ``audit tune``; return its parser (the CLI adds the plugins' training options to it)."""
    tune = sub.add_parser(
        "tune", help="search hyperparameters and mitigations under a release policy (Optuna)"
    )
    core = tune.add_argument_group("core options")
    core.add_argument("--data", default="adult", help="adult | digits | FILE.csv | FILE.parquet [adult]")
    core.add_argument("--target", help="the target column (required for a file)")
    core.add_argument("--sensitive", default="", help="comma-separated sensitive columns")
    core.add_argument("--policy", help="release policy YAML: its rules are the search's constraints")
    core.add_argument(
        "--objectives",
        default="max performance.accuracy",
        help="comma-separated 'max|min METRIC[:lower|upper]', on the validation split [max performance.accuracy]",
    )
    core.add_argument("--pick", default="max performance.accuracy", help="how the feasible trial is chosen")
    core.add_argument("--trials", type=int, default=20, help="COMPLETE trials the study should hold [20]")
    core.add_argument("--study", help="Optuna SQLite file; rerun the command to continue [<out>/study.db]")
    core.add_argument("--space", help="YAML search space replacing the default one")
    core.add_argument(
        "--out", default="runs/tune", help="folder for report.json/html and chosen/ [runs/tune]"
    )
    core.add_argument("--seed", type=int, default=0, help="sampler and training seed [0]")
    core.add_argument("--epochs", type=int, help="fixed epoch budget of every trial [the train default]")
    core.add_argument("--val-fraction", type=float, help="validation share of a file's rows [0.1]")
    core.add_argument("--test-fraction", type=float, help="test share of a file's rows [0.2]")
    return tune


def build_plan(args: argparse.Namespace, pm: pluggy.PluginManager) -> Any:
    """The Plan the arguments describe, every part checked before any training (bad input: exit 2)."""
    from audit.tune import Plan, check_metric_names, parse_objective, parse_objectives, read_policy
    from audit.tune_space import CORE_NAMES, default_space, load_space

    if args.trials < 1:
        raise AuditError(f"--trials {args.trials}: expected at least 1")
    plugin = {o.dest for group in pm.hook.audit_cli_options() for o in (group or []) if "train" in o.commands}
    options = {dest: getattr(args, dest) for dest in plugin if hasattr(args, dest)}
    if options.get("postprocess"):  # its thresholds are fitted on the validation rows a trial is scored on
        raise AuditError(
            "--postprocess cannot be tuned: it fits on the validation split that scores each trial"
        )
    sensitive = parse_list(args.sensitive, what="--sensitive") if args.sensitive else []
    if args.space:
        space = load_space(args.space, set(CORE_NAMES) | plugin)
    else:
        space = default_space(sensitive=bool(sensitive), options=options)
    rules, digest = read_policy(args.policy)
    settings = {
        k: getattr(args, k)
        for k in ("epochs", "val_fraction", "test_fraction")
        if getattr(args, k) is not None
    }
    out = Path(args.out)
    plan = Plan(
        data=args.data,
        target=args.target,
        sensitive=sensitive,
        objectives=parse_objectives(args.objectives),
        pick=parse_objective(args.pick, "--pick"),
        space=space,
        rules=rules,
        policy=args.policy,
        policy_sha256=digest,
        trials=args.trials,
        study_path=Path(args.study) if args.study else out / "study.db",
        out=out,
        seed=args.seed,
        quiet=args.quiet,
        settings=settings,
        options=options,
    )
    check_metric_names(plan, pm)
    return plan


def chosen_facts(trial: Any, outcome: Any, plan: Any) -> dict[str, Any]:
    """What the report says of the chosen model: its trial, parameters, validation figures and test audit."""
    test = outcome.report["metrics"]
    keys = [o.key for o in plan.objectives] + [plan.pick.key, "performance.accuracy"]
    return {
        "trial": trial.number,
        "params": dict(trial.params),
        "validation": {k: trial.user_attrs["metrics"].get(k) for k in keys},
        "test": {k: test.get(k) for k in keys},
        "gate_passed": test.get("gate.passed"),
        "folder": str(plan.out / "chosen"),
    }


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path`` (POSIX ``flock``; no lock where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent processes on one folder are then the user's to avoid
        yield
        return
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    """Search, choose, audit the chosen model on the test split, write the report; exit 1 when none passes."""
    from audit.cli_output import written_line
    from audit.data import load_dataset
    from audit.runner import configure
    from audit.tune import complete_trials, open_study, optimize, pick_trial, run_config, train_chosen
    from audit.tune_report import study_data, write_tune_report

    try:
        import optuna  # noqa: F401 - an optional extra: its absence is the user's to fix, not a bug
    except ImportError:
        raise AuditError("audit tune needs Optuna; install it with pip install 'rai-audit[tune]'") from None
    plan = build_plan(args, pm)
    config = run_config(plan, {}, pm, out=str(plan.out / "chosen"))
    configure(config, pm)  # plugin options checked now
    load_dataset(config)  # the data too: bad input is exit 2 before any study is written
    study = open_study(plan)
    optimize(study, plan, pm)
    trials = complete_trials(study)
    best = pick_trial(trials, plan.pick, [t.number for t in study.best_trials])
    chosen = None
    # Processes sharing one study (the documented way to run N) also share <out>: each writes chosen/ and the
    # report, one process at a time, or one's staged swap of the folder could pull files from under the other.
    # the lock lives beside <out>, not in it: writing the report swaps the folder itself
    with _exclusive(plan.out.parent / f".{plan.out.name}.tune.lock"):
        if best is not None:
            chosen = chosen_facts(best, train_chosen(plan, best, pm), plan)
        written = write_tune_report(plan.out, study_data(study, plan, chosen))
    if not plan.quiet:
        print(written_line(written + ([plan.out / "chosen"] if chosen else [])))
    if best is None:
        print(f"audit: no trial passed the policy; nearest: {_nearest_line(trials)}", file=sys.stderr)
        return EXIT_NO_FEASIBLE
    if not plan.quiet:
        print(f"chosen: trial {best.number} {dict(best.params)}; test: {chosen['test']}")
    if chosen["gate_passed"] in (None, 1, True):
        return EXIT_OK
    print(
        f"audit: the chosen trial {best.number} passed the policy on the validation split but fails it on the "
        f"test split; see {plan.out / 'chosen' / 'report.html'}",
        file=sys.stderr,
    )
    return EXIT_NO_FEASIBLE


def _nearest_line(trials: list[Any]) -> str:
    from audit.tune import nearest_trials

    parts = [
        f"trial {t.number} ({'; '.join(t.user_attrs.get('failed_rules', []))})"
        for t in nearest_trials(trials)
    ]
    return ", ".join(parts) or "no trial completed"

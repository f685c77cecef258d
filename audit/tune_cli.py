"""``audit tune``'s command line: its arguments, the plan they make, and the run (search, choice, report, exit)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pluggy

from audit.config import parse_list
from audit.errors import AuditError

EXIT_OK, EXIT_NO_FEASIBLE = 0, 1
# A tuning run's validation share (``audit train``'s is 0.1): every trial's constraints are judged on these rows
# with 95% intervals, and on Adult's ~3,000 rows at 0.1 the parity interval alone is ~0.05 wide.
TUNE_VAL_FRACTION = 0.3


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
    core.add_argument(
        "--val-fraction",
        type=float,
        help=f"validation share of the training rows: every trial is scored on them [{TUNE_VAL_FRACTION}]",
    )
    core.add_argument("--test-fraction", type=float, help="test share of a file's rows [0.2]")
    core.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes sharing the study (each gets cores/N torch threads) [1]",
    )
    return tune


def build_plan(args: argparse.Namespace, pm: pluggy.PluginManager) -> Any:
    """The Plan the arguments describe, every part checked before any training (bad input: exit 2)."""
    from audit.tune import Plan, check_metric_names, parse_objective, parse_objectives, read_policy
    from audit.tune_space import CORE_NAMES, default_space, load_space

    for flag, value in (("--trials", args.trials), ("--jobs", args.jobs)):
        if value < 1:
            raise AuditError(f"{flag} {value}: expected at least 1")
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
    settings.setdefault("val_fraction", TUNE_VAL_FRACTION)
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
        # what its audit warns of (a one-class model, a figure below its reference), for the search's first screen
        "warnings": [
            f"{section['title']}: {warning}"
            for section in outcome.report["sections"]
            for warning in section.get("warnings", [])
        ],
    }


def work(args: argparse.Namespace, worker: int, threads: int, errors: Any, parent: int) -> None:
    """One --jobs worker process: trials on the shared study until it holds --trials COMPLETE ones, then exit."""
    from audit.plugins import get_plugin_manager
    from audit.tune import open_study, optimize
    from audit.tune_jobs import watch_parent

    watch_parent(parent)  # the parent killed, even by SIGKILL: this worker ends too
    try:
        import torch

        torch.set_num_threads(threads)  # this process is ours alone: the N workers share the cores out
        pm = get_plugin_manager()
        plan = build_plan(args, pm)
        plan.quiet = True  # the parent draws the one progress bar
        optimize(open_study(plan, worker=worker), plan, pm)
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group: the parent reports it, once
        sys.exit(130)
    except AuditError as exc:
        errors.put(("AuditError", str(exc)))
        sys.exit(2)
    except Exception as exc:
        errors.put((type(exc).__name__, str(exc)))
        raise


def search(args: argparse.Namespace, plan: Any, pm: pluggy.PluginManager) -> Any:
    """Run the study's trials in this process, or in --jobs worker processes; return the study."""
    from audit.progress import progress_bar
    from audit.tune import open_study, optimize, trial_counts
    from audit.tune_jobs import run_workers

    study = open_study(plan)  # made here first, so that the workers never race on a new file's schema
    if args.jobs == 1:
        optimize(study, plan, pm)
        return study
    with progress_bar(total=plan.trials, desc="tune", unit="trial", enabled=not plan.quiet) as bar:

        def progress() -> None:
            new = trial_counts(study)[0] - bar.n
            if new > 0:  # tqdm redraws on every update, even of 0
                bar.update(new)

        run_workers(work, args, jobs=args.jobs, progress=progress)
        progress()
    return study


def run(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    """Search, choose, audit the chosen model on the test split, write the report; exit 1 when none passes."""
    from audit.cli_output import written_line
    from audit.data import load_dataset
    from audit.runner import configure
    from audit.tune import StudyLock, complete_trials, pick_trial, run_config, train_chosen
    from audit.tune_report import study_data, write_tune_report

    try:
        import optuna  # noqa: F401 - an optional extra: its absence is the user's to fix, not a bug
    except ImportError:
        raise AuditError("audit tune needs Optuna; install it with pip install 'rai-audit[tune]'") from None
    plan = build_plan(args, pm)
    config = run_config(plan, {}, pm, out=str(plan.out / "chosen"))
    configure(config, pm)  # plugin options checked now
    load_dataset(config)  # the data too: bad input is exit 2 before any study is written
    study = search(args, plan, pm)
    trials = complete_trials(study)
    best = pick_trial(trials, plan.pick, [t.number for t in study.best_trials])
    chosen = None
    # Processes sharing one study (the documented way to run N) also share <out>: each writes chosen/ and the
    # report, one process at a time, or one's staged swap of the folder could pull files from under the other.
    # the lock lives beside <out>, not in it: writing the report swaps the folder itself
    with StudyLock(plan.out.parent / f".{plan.out.name}.tune.lock"):
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

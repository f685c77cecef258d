"""The ``audit`` command: parses arguments and dispatches. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit import __version__
from audit.cli_output import finish_command, set_files, written_line
from audit.config import (
    COMPRESSIONS,
    OPTIMIZERS,
    SCHEDULES,
    CliOption,
    Command,
    build_config,
    list_type,
    load_yaml_config,
)
from audit.errors import AuditError
from audit.tracking import add_mlflow_argument, open_tracking

# The exit-code contract: 1 means only "a gate failed", so CI can tell a policy decision from a crash.
EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL_ERROR = 0, 1, 2, 3
DISTRIBUTED_GRACE_S = 3.0  # see main(): how long a failed distributed worker waits before it reports


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise AuditError(f"{self.prog}: {message}")


_csv = list_type(str, what="names")
_int_csv = list_type(int, what="integers")


def _add_common(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument(
        "--data", default=S, help="built-in data set (adult, digits) or a .csv/.parquet file [adult]"
    )
    p.add_argument("--target", default=S, help="target column (built-in data knows its own)")
    p.add_argument(
        "--sensitive", type=_csv, default=S, help="comma-separated sensitive columns, e.g. sex,race"
    )
    p.add_argument("--categorical", type=_csv, default=S, help="force these columns to be categorical")
    p.add_argument("--numeric", type=_csv, default=S, help="force these columns to be numeric")
    p.add_argument("--drop-columns", type=_csv, default=S, help="columns to leave out of the features")
    p.add_argument(
        "--drop-sensitive",
        action="store_true",
        default=S,
        help="leave the sensitive columns out of the features",
    )
    p.add_argument(
        "--positive-label", default=S, help="the positive class of a binary target [the second sorted value]"
    )
    p.add_argument("--val-fraction", type=float, default=S, help="validation share [0.1]")
    p.add_argument(
        "--test-fraction",
        type=float,
        default=S,
        help="test share when the data has no split of its own [0.2]",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=S,
        help="batch size [1024 at 16k+ training rows, else a tenth of the rows, 16-256]",
    )
    p.add_argument("--seed", type=int, default=S, help="one seed for splits, initialisation and batches [0]")
    p.add_argument("--device", default=S, help="auto, cpu or cuda[:N] [auto]")
    p.add_argument(
        "--compress",
        type=_csv,
        default=S,
        help=f"post-training compression to measure: {','.join(COMPRESSIONS)}",
    )
    p.add_argument(
        "--config", dest="config_file", default=S, help="YAML file of option: value pairs (flags win)"
    )
    p.add_argument("--out", default=S, help="output folder [runs/<data>]")
    p.add_argument("--policy", default=S, help="gate the report against this policy (exit 1 on failure)")
    p.add_argument("--quiet", "-q", action="store_true", default=S, help="no progress bars or summary")
    p.add_argument(
        "--sign-key", default=S, help="sign the report with this Ed25519 private key (PEM) [$AUDIT_SIGN_KEY]"
    )


def _add_training(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument("--model", default=S, help="auto, mlp, cnn, or package.module:factory [auto]")
    p.add_argument("--hidden", type=_int_csv, default=S, help="MLP hidden sizes [128,64]")
    p.add_argument("--channels", type=_int_csv, default=S, help="CNN channels [16,32]")
    p.add_argument("--dropout", type=float, default=S, help="dropout [0]")
    p.add_argument("--epochs", type=int, default=S, help="epochs [10, or enough for 250 steps: at most 200]")
    p.add_argument(
        "--lr", type=float, default=S, help="learning rate [3e-3 at batch 1024+, else 1e-3; DP-SGD 3e-3]"
    )
    p.add_argument("--optimizer", default=S, help=f"{', '.join(OPTIMIZERS)} [adam]")
    p.add_argument("--momentum", type=float, default=S, help="momentum for sgd/rmsprop [0.9]")
    p.add_argument("--weight-decay", type=float, default=S, help="weight decay [0]")
    p.add_argument("--schedule", default=S, help=f"learning-rate schedule: {', '.join(SCHEDULES)} [none]")
    p.add_argument("--warmup-epochs", type=float, default=S, help="linear warm-up for --schedule cosine [0]")
    p.add_argument("--step-size", type=int, default=S, help="epochs between decays for --schedule step [5]")
    p.add_argument("--gamma", type=float, default=S, help="decay factor for --schedule step [0.5]")
    p.add_argument("--label-smoothing", type=float, default=S, help="label smoothing [0]")
    p.add_argument("--grad-clip", type=float, default=S, help="clip the gradient norm to this value")
    p.add_argument(
        "--patience",
        type=int,
        default=S,
        help="early-stopping patience in epochs on validation [3, or 80 steps]",
    )
    p.add_argument(
        "--no-early-stopping",
        dest="patience",
        action="store_const",
        const=None,
        default=S,
        help="train every epoch",
    )
    p.add_argument("--compile", action="store_true", default=S, help="torch.compile the model")


def _add_launch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--nproc-per-node",
        type=int,
        default=argparse.SUPPRESS,
        help="train on N local processes (torchrun, DistributedDataParallel; gloo on CPU, NCCL one GPU each); "
        "--batch-size stays the global batch [1]",
    )


def _add_trained_elsewhere(p: argparse.ArgumentParser) -> None:
    """evaluate's options for a model trained outside rai-audit (see the README's Security model)."""
    S = argparse.SUPPRESS
    p.add_argument(
        "--weights", default=S, help="the state_dict (torch.save(model.state_dict())) for --model FACTORY"
    )
    p.add_argument(
        "--program",
        default=S,
        help="a TorchScript (.pt) or torch.export (.pt2) program you trust: it is code",
    )
    p.add_argument(
        "--features-ready",
        action="store_true",
        default=S,
        help="--data's columns are the model's inputs as they are (no imputation, encoding or scaling)",
    )
    p.add_argument(
        "--features",
        type=_csv,
        default=S,
        help="the input columns in order [every column but target and --sensitive]",
    )
    p.add_argument(
        "--train-data", default=S, help="the model's training rows (same columns), for the membership audit"
    )


# Library warnings that say nothing actionable about a run: Opacus' RDP accountant hitting its
# largest order (the bound is still valid), torch's note on full backward hooks when the inputs
# need no gradient (Opacus' per-sample hooks on the first layer), and torch's deprecation of the
# eager int8 kernels that --compress quantize measures with.
BENIGN_LIBRARY_WARNINGS = (
    "Optimal order is the largest alpha",
    "Full backward hook is firing when gradients are computed",
    "torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor",
)


def build_parser(
    plugin_options: list[CliOption], commands: list[Command] = (), owners: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    """The full parser: core subcommands plus every plugin's options (``owners``: option dest -> plugin name)."""
    parser = _Parser(
        prog="audit",
        description="Train a PyTorch model and audit privacy, fairness, robustness and efficiency in one report.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s (rai-audit) {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an internal error (exit code 3)"
    )
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train a model and write its audit report")
    core = train.add_argument_group("core options")
    _add_common(core)
    add_mlflow_argument(core)
    _add_training(core)
    _add_launch(core)
    evaluate = sub.add_parser("evaluate", help="audit a saved model again, without training")
    evaluate_core = evaluate.add_argument_group("core options")
    evaluate_core.add_argument(
        "--model",
        dest="model_path",
        default=argparse.SUPPRESS,
        help="model.pt written by 'audit train', or package.module:factory (code you trust) with --weights",
    )
    evaluate_core.add_argument(
        "--model-factory",
        default=argparse.SUPPRESS,
        help="package.module:factory that rebuilds a model file trained with --model FACTORY (code you trust)",
    )
    _add_trained_elsewhere(evaluate_core)
    _add_common(evaluate_core)
    add_mlflow_argument(evaluate_core)
    _add_plugin_options({"train": train, "evaluate": evaluate}, plugin_options, owners or {})
    from audit import tune_cli

    # a tune trial is a training run: it takes the plugins' training options
    _add_plugin_options({"train": tune_cli.add_subcommand(sub)}, plugin_options, owners or {})
    rep = sub.add_parser("report", help="re-render report.json as HTML, Markdown and a model card")
    rep.add_argument("report")
    rep.add_argument("--format", choices=["html", "md", "model-card", "all"], default="all")
    rep.add_argument("--out", help="output file (single format) or folder [beside the report]")
    sub.add_parser("plugins", help="list loaded plugins, their versions and hooks")
    from audit import gate_cli

    gate_cli.add_subcommands(sub)
    for command in commands:
        if command.name in sub.choices:
            raise AuditError(f"two plugins provide the subcommand {command.name!r}")
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    for command_parser in sub.choices.values():
        _add_quiet(command_parser)
    parser.command_parsers = dict(sub.choices)
    return parser


def _add_plugin_options(
    targets: dict[str, argparse.ArgumentParser], plugin_options: list[CliOption], owners: dict[str, str]
) -> None:
    """Each plugin's options in a help group of its own, named after the plugin that declared them."""
    groups: dict[tuple[str, str], Any] = {}
    for option in plugin_options:
        plugin = owners.get(option.dest, "plugin")
        for name, target in targets.items():
            if name in option.commands:
                if (name, plugin) not in groups:
                    groups[name, plugin] = target.add_argument_group(f"{plugin} (plugin options)")
                groups[name, plugin].add_argument(
                    *option.flags, **{**option.kwargs, "default": argparse.SUPPRESS, "dest": option.dest}
                )


def _add_quiet(command_parser: argparse.ArgumentParser) -> None:
    """--quiet on every subcommand (a plugin's too): no progress bars, summaries or lists of files written."""
    taken = command_parser._option_string_actions
    if "--quiet" in taken:
        return
    flags = ["--quiet"] + ([] if "-q" in taken else ["-q"])
    command_parser.add_argument(
        *flags, action="store_true", help="no progress bars, summaries or lines naming the files written"
    )


def plugin_cli_options(pm: Any) -> tuple[list[CliOption], dict[str, str]]:
    """Every plugin's options (in hook-call order) and, per option dest, the name of the plugin that declared it."""
    options: list[CliOption] = []
    owners: dict[str, str] = {}
    for impl in reversed(pm.hook.audit_cli_options.get_hookimpls()):  # pluggy calls the last registered first
        for option in impl.function() or []:
            options.append(option)
            owners[option.dest] = impl.plugin_name
    return options, owners


def _config_action(key: str, command: argparse.ArgumentParser) -> argparse.Action | None:
    """The option a config key names: by its flag (``no_early_stopping`` is --no-early-stopping), else by its dest."""
    flag = "--" + key.replace("_", "-")
    actions = [a for a in command._actions if a.option_strings]
    by_flag = next((a for a in actions if flag in a.option_strings), None)
    if by_flag is not None:
        return by_flag
    by_dest = [a for a in actions if a.dest == key]
    return next((a for a in by_dest if a.nargs != 0 or a.const is not None), by_dest[0] if by_dest else None)


def _config_value_tokens(
    key: str, value: Any, action: argparse.Action, command: argparse.ArgumentParser
) -> list[str]:
    """One key's tokens; a value the option cannot take is refused naming the key (the caller adds the file)."""
    flag = next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    if action.nargs == 0:  # a switch: true turns it on; false (or null) leaves it off
        if value is None:
            off = [a for a in command._actions if a.dest == action.dest and a.nargs == 0 and a.const is None]
            return [off[0].option_strings[0]] if off and off[0] is not action else []
        if not isinstance(value, bool):
            raise AuditError(f"key {key!r} is a switch ({flag}); expected true or false, got {value!r}")
        return [flag] if value else []
    if value is None:
        off = [a for a in command._actions if a.dest == action.dest and a.nargs == 0 and a.const is None]
        return [off[0].option_strings[0]] if off else []
    if isinstance(value, bool) and action.nargs == "?":
        return [flag] if value else []
    text = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
    try:
        parsed = action.type(text) if callable(action.type) else text
    except argparse.ArgumentTypeError as exc:
        raise AuditError(f"key {key!r} ({flag}): {exc}") from None
    except (TypeError, ValueError):
        expected = {"int": "an integer", "float": "a number"}.get(
            getattr(action.type, "__name__", ""), "a valid value"
        )
        raise AuditError(f"key {key!r} ({flag}): expected {expected}, got {value!r}") from None
    if action.choices is not None and parsed not in action.choices:
        raise AuditError(
            f"key {key!r} ({flag}): expected one of {', '.join(map(str, action.choices))}; got {value!r}"
        )
    return [flag, text]


def config_file_tokens(
    values: dict[str, Any], command: argparse.ArgumentParser, train: argparse.ArgumentParser
) -> list[str]:
    """A YAML config's option: value pairs as command-line tokens, so argparse checks them exactly as it checks flags.

    Keys are flag names or option names (dashes or underscores). Lists join with commas, ``true`` turns a
    switch on, ``null`` picks the option's "off" form (``patience: null`` is --no-early-stopping). Training
    options in a config given to ``evaluate`` are skipped: they do not apply.
    """
    tokens: list[str] = []
    for key, value in values.items():
        action = _config_action(key, command)
        if action is None:
            if _config_action(key, train) is not None:
                continue
            raise AuditError(f"key {key!r} is unknown; expected a flag of 'audit train --help'")
        _refuse_code(key, value, action)
        tokens += _config_value_tokens(key, value, action, command)
    return tokens


# evaluate's options that choose code to import or run: the user's own command line only, never a file it reads
CODE_OPTIONS = ("program", "model_factory")


def _refuse_code(key: str, value: Any, action: argparse.Action) -> None:
    if action.dest in CODE_OPTIONS or (action.dest == "model_path" and ":" in str(value)):
        flag = action.option_strings[0]
        raise AuditError(
            f"key {key!r} names code to run ({flag}); a config file is data: give {flag} on the command line"
        )


def _merge(args: argparse.Namespace, plugin_options: list[CliOption], argv: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {
        o.dest: o.kwargs.get("default") for o in plugin_options if args.cmd in o.commands
    }
    values.update({k: v for k, v in vars(args).items() if k not in ("cmd", "verbose", "debug", "mlflow")})
    if args.cmd == "evaluate" and "data" not in values:
        values["data"] = None  # the saved model's built-in data (resolved by run_evaluate)
    values["command"] = args.cmd
    values["command_line"] = ["audit", *argv]
    return values


def _given(args: argparse.Namespace, from_argv: set[str], plugin_options: list[CliOption]) -> dict[str, str]:
    """Where each explicitly given value came from: the command line, or the --config file (flags win)."""
    dests = {o.dest for o in plugin_options}
    sources = {}
    for key in vars(args):
        if key in ("cmd", "verbose", "debug", "command_line", "mlflow"):
            continue
        source = "command line" if key in from_argv else f"config file {args.config_file}"
        sources[f"options.{key}" if key in dests else key] = source
    return sources


def _print_summary(report: dict[str, Any]) -> None:
    """The headline metrics every section declared, in report order."""
    for section in report["sections"]:
        for key in section.get("headline", []):
            value = report["metrics"].get(key)
            print(f"  {key:<52} {value:.4g}" if isinstance(value, (int, float)) else f"  {key:<52} {value}")


def _parse(argv: Sequence[str], parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, set[str]]:
    """Parse the command line and, with --config, the file's values as flags; return the keys the line itself set."""
    args = parser.parse_args(argv)
    from_argv = set(vars(args))
    if getattr(args, "config_file", None):
        # The file's values go in right after the subcommand, so argparse checks them and later flags win.
        at = argv.index(args.cmd) + 1
        try:
            tokens = config_file_tokens(
                load_yaml_config(args.config_file),
                parser.command_parsers[args.cmd],
                parser.command_parsers["train"],
            )
            args = parser.parse_args([*argv[:at], *tokens, *argv[at:]])
        except AuditError as exc:
            if str(exc).startswith("config file "):
                raise
            raise AuditError(f"{exc} (from config file {args.config_file})") from None
    return args, from_argv


def _train_or_evaluate(
    args: argparse.Namespace,
    from_argv: set[str],
    plugin_options: list[CliOption],
    pm: Any,
    argv: Sequence[str],
) -> int:
    from audit.runner import run_evaluate, run_train

    launched = _launch_if_asked(args, argv)
    if launched is not None:
        return launched
    sources = _given(args, from_argv, plugin_options)
    config = build_config(
        _merge(args, plugin_options, argv), {o.dest: o for o in plugin_options}, sources=sources
    )
    tracking = open_tracking(args.mlflow)  # a bad --mlflow is refused before any data or training
    with warnings.catch_warnings():
        for message in BENIGN_LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        if config.quiet:
            warnings.simplefilter("ignore")  # --quiet: the report carries every warning that matters
        outcome = (run_train if args.cmd == "train" else run_evaluate)(config, pm)
    if not outcome.report:  # a distributed run's rank above 0: rank 0 audits, writes and prints
        return EXIT_OK
    gate = outcome.report["metrics"].get("gate.passed")
    if not config.quiet:
        _print_summary(outcome.report)
        if gate is not None:
            from audit.gate_cli import print_gate_table

            print_gate_table(outcome.report)
    files = set_files(outcome.out_dir / "report.json", outcome.report)
    finish_command(files, report=outcome.report, command=args.cmd, tracking=tracking, quiet=config.quiet)
    return EXIT_GATE_FAILED if gate == 0 else EXIT_OK


def _launch_if_asked(args: argparse.Namespace, argv: Sequence[str]) -> int | None:
    """``--nproc-per-node N`` (N > 1): start N processes of this same command under torchrun; their exit code.

    None: run here (no flag, N = 1, or this process is already one of torchrun's workers)."""
    nproc = vars(args).pop("nproc_per_node", None)
    if nproc is None or "LOCAL_WORLD_SIZE" in os.environ:  # a worker: the flag came back from --config
        return None
    if nproc < 1:
        raise AuditError(f"--nproc-per-node must be at least 1, got {nproc}")
    if nproc == 1:
        return None
    from audit.distributed import launch

    code, line = launch(without_flag(argv, "--nproc-per-node"), nproc_per_node=nproc)
    if line is not None:
        print(f"audit: error: {line}", file=sys.stderr)
    return code


def without_flag(argv: Sequence[str], flag: str) -> list[str]:
    """``argv`` without ``flag`` and its value (``--flag N`` or ``--flag=N``)."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(f"{flag}="):
            out.append(token)
    return out


def _run(argv: Sequence[str]) -> int:
    from audit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin_options, owners = plugin_cli_options(pm)
    commands = [c for group in pm.hook.audit_commands() for c in (group or [])]
    args, from_argv = _parse(argv, build_parser(plugin_options, commands, owners))
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.cmd in ("train", "evaluate"):
        return _train_or_evaluate(args, from_argv, plugin_options, pm, argv)
    if args.cmd == "report":
        return _render(args)
    if args.cmd == "tune":
        from audit import tune_cli

        return tune_cli.run(args, pm)
    if args.cmd == "plugins":
        from audit.plugins import describe_plugins

        for row in describe_plugins(pm):  # the list is the answer: --quiet leaves it
            print(
                f"{row['name']:<12} {row['distribution']} {row['version']}  hooks: {', '.join(row['hooks'])}"
            )
        return EXIT_OK
    plugin_command = next((c for c in commands if c.name == args.cmd), None)
    if plugin_command is not None:
        return plugin_command.run(args, pm)
    from audit import gate_cli

    return gate_cli.dispatch(args, pm)


def _render(args: argparse.Namespace) -> int:
    from audit.outputs import write_atomic
    from audit.render import RENDERINGS, render_beside
    from audit.report import read_report

    source = Path(args.report)
    formats = list(RENDERINGS) if args.format == "all" else [args.format]
    files = render_beside(read_report(args.report), source, formats)
    written = []
    for path, text in files.values():
        if args.out and len(formats) == 1 and not Path(args.out).is_dir():
            target = Path(args.out)
        else:
            target = (Path(args.out) if args.out else source.parent) / path.name
        write_atomic(target, text)
        written.append(target)
    if not args.quiet:
        print(written_line(written))
    return EXIT_OK


def _crash_log(argv: Sequence[str], text: str) -> Path:
    """Write an internal error's traceback into the run's --out folder when one was given, else the temp folder."""
    out = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--out"), None)
    folder = Path(out) if out and Path(out).is_dir() else Path(tempfile.gettempdir())
    fd, name = tempfile.mkstemp(prefix="audit-error-", suffix=".txt", dir=folder)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    return Path(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit`` console script; returns the exit code (0, 1 gate failed, 2 bad input, 3 bug)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except AuditError as exc:
        if os.environ.get("RANK", "0") == "0":  # torchrun's other workers meet the same check: one line
            print(f"audit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug (ours or a plugin's) is not a verdict: exit 3, never 1
        text = traceback.format_exc()
        if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
            # A distributed worker whose peer died fails too (a broken connection): torchrun's agent stops it
            # within this grace, so only the worker that failed first speaks (or the launcher, for one killed).
            time.sleep(DISTRIBUTED_GRACE_S)
        if "--debug" in argv:
            print(text, file=sys.stderr, end="")
        where = _crash_log(argv, text)
        print(
            f"audit: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
            f"(a bug in rai-audit or a plugin, not a verdict; traceback in {where}; --debug shows it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())

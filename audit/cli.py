"""The ``audit`` command: parses arguments and dispatches. No logic of its own."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from audit import __version__
from audit.config import (
    COMPRESSIONS,
    OPTIMIZERS,
    SCHEDULES,
    CliOption,
    Command,
    build_config,
    load_yaml_config,
)
from audit.errors import AuditError

EXIT_OK, EXIT_GATE_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) instead of usage dumps."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise AuditError(f"{self.prog}: {message}")


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _int_csv(value: str) -> list[int]:
    try:
        return [int(part) for part in _csv(value)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {value!r}") from None


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
        "--batch-size", type=int, default=S, help="batch size [1024 for 16k+ training rows, else 256]"
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


def _add_training(p: argparse.ArgumentParser) -> None:
    S = argparse.SUPPRESS
    p.add_argument("--model", default=S, help="auto, mlp, cnn, or package.module:factory [auto]")
    p.add_argument("--hidden", type=_int_csv, default=S, help="MLP hidden sizes [128,64]")
    p.add_argument("--channels", type=_int_csv, default=S, help="CNN channels [16,32]")
    p.add_argument("--dropout", type=float, default=S, help="dropout [0]")
    p.add_argument("--epochs", type=int, default=S, help="epochs [10]")
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
        "--patience", type=int, default=S, help="early-stopping patience in epochs on the validation loss [3]"
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


# Library warnings that say nothing actionable about a run: Opacus' RDP accountant hitting its
# largest order (the bound is still valid), torch's note on full backward hooks when the inputs
# need no gradient (Opacus' per-sample hooks on the first layer), and torch's deprecation of the
# eager int8 kernels that --compress quantize measures with.
BENIGN_LIBRARY_WARNINGS = (
    "Optimal order is the largest alpha",
    "Full backward hook is firing when gradients are computed",
    "torch.quantize_per_tensor, torch.quantize_per_channel and other quantized tensor",
)


def build_parser(plugin_options: list[CliOption], commands: list[Command] = ()) -> argparse.ArgumentParser:
    """The full parser: core subcommands plus every plugin's options."""
    parser = _Parser(
        prog="audit",
        description="Train a PyTorch model and audit privacy, fairness, robustness and efficiency in one report.",
    )
    parser.add_argument("--version", action="version", version=f"rai-audit {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True, parser_class=_Parser)
    train = sub.add_parser("train", help="train a model and write its audit report")
    _add_common(train)
    _add_training(train)
    evaluate = sub.add_parser("evaluate", help="audit a saved model again, without training")
    evaluate.add_argument(
        "--model", dest="model_path", required=True, help="model.pt written by 'audit train'"
    )
    _add_common(evaluate)
    for option in plugin_options:
        for name, target in (("train", train), ("evaluate", evaluate)):
            if name in option.commands:
                target.add_argument(
                    *option.flags, **{**option.kwargs, "default": argparse.SUPPRESS, "dest": option.dest}
                )
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
    parser.command_parsers = dict(sub.choices)
    return parser


def config_file_tokens(
    values: dict[str, Any], command: argparse.ArgumentParser, train: argparse.ArgumentParser
) -> list[str]:
    """A YAML config's option: value pairs as command-line tokens, so argparse checks them exactly as it checks flags.

    Lists join with commas, ``true`` turns a switch on, ``null`` picks the option's "off" form (``patience: null``
    is --no-early-stopping). Training options in a config given to ``evaluate`` are skipped: they do not apply.
    """
    tokens: list[str] = []
    for key, value in values.items():
        actions = [a for a in command._actions if a.dest == key and a.option_strings]
        if not actions:
            if any(a.dest == key for a in train._actions):
                continue
            raise AuditError(f"option {key!r} is unknown; expected a flag of 'audit train --help'")
        if value is None:
            off = [a for a in actions if a.nargs == 0 and a.const is None]
            tokens += [off[0].option_strings[0]] if off else []
            continue
        action = next((a for a in actions if a.nargs != 0 or a.const is not None), actions[0])
        flag = (
            action.option_strings[-1]
            if action.option_strings[-1].startswith("--")
            else action.option_strings[0]
        )
        if isinstance(value, bool) and (action.nargs == 0 or action.nargs == "?"):
            tokens += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            tokens += [flag, ",".join(str(v) for v in value)]
        else:
            tokens += [flag, str(value)]
    return tokens


def _merge(args: argparse.Namespace, plugin_options: list[CliOption], argv: Sequence[str]) -> dict[str, Any]:
    values: dict[str, Any] = {
        o.dest: o.kwargs.get("default") for o in plugin_options if args.cmd in o.commands
    }
    values.update({k: v for k, v in vars(args).items() if k not in ("cmd", "verbose")})
    if args.cmd == "evaluate" and "data" not in values:
        values["data"] = None  # the saved model's built-in data (resolved by run_evaluate)
    values["command"] = args.cmd
    values["command_line"] = ["audit", *argv]
    return values


def _print_summary(outcome: Any) -> None:
    metrics = outcome.report["metrics"]
    keys = [
        k
        for k in (
            "performance.accuracy",
            "performance.roc_auc",
            "efficiency.train_samples_per_s",
            "privacy.epsilon",
            "privacy.mia_auc",
            "robustness.worst_group_robust_accuracy",
            "gate.passed",
        )
        if k in metrics
    ]
    keys += [k for k in metrics if k.endswith("demographic_parity_difference") and "&" not in k][:3]
    for key in keys:
        value = metrics[key]
        print(f"  {key:<52} {value:.4g}" if isinstance(value, (int, float)) else f"  {key:<52} {value}")
    print(f"report: {outcome.out_dir / 'report.html'}")


def _run(argv: Sequence[str]) -> int:
    from audit.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin_options = [o for group in pm.hook.audit_cli_options() for o in (group or [])]
    commands = [c for group in pm.hook.audit_commands() for c in (group or [])]
    parser = build_parser(plugin_options, commands)
    args = parser.parse_args(argv)
    if getattr(args, "config_file", None):
        # The file's values go in right after the subcommand, so argparse checks them and later flags win.
        tokens = config_file_tokens(
            load_yaml_config(args.config_file),
            parser.command_parsers[args.cmd],
            parser.command_parsers["train"],
        )
        at = argv.index(args.cmd) + 1
        try:
            args = parser.parse_args([*argv[:at], *tokens, *argv[at:]])
        except AuditError as exc:
            raise AuditError(f"{exc} (from config file {args.config_file})") from None
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.cmd in ("train", "evaluate"):
        from audit.runner import run_evaluate, run_train

        config = build_config(_merge(args, plugin_options, argv), {o.dest: o for o in plugin_options})
        with warnings.catch_warnings():
            for message in BENIGN_LIBRARY_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            if config.quiet:
                warnings.simplefilter("ignore")  # --quiet: the report carries every warning that matters
            outcome = (run_train if args.cmd == "train" else run_evaluate)(config, pm)
        if not config.quiet:
            _print_summary(outcome)
        gate = outcome.report["metrics"].get("gate.passed")
        if gate is not None and not config.quiet:
            from audit.gate_cli import print_gate_table

            print_gate_table(outcome.report)
        return EXIT_GATE_FAILED if gate == 0 else EXIT_OK
    if args.cmd == "report":
        return _render(args)
    if args.cmd == "plugins":
        from audit.plugins import describe_plugins

        for row in describe_plugins(pm):
            print(
                f"{row['name']:<12} {row['distribution']} {row['version']}  hooks: {', '.join(row['hooks'])}"
            )
        return EXIT_OK
    plugin_command = next((c for c in commands if c.name == args.cmd), None)
    if plugin_command is not None:
        return plugin_command.run(args)
    from audit import gate_cli

    return gate_cli.dispatch(args, pm)


def _render(args: argparse.Namespace) -> int:
    from audit.render import RENDERINGS, render_beside
    from audit.report import read_report, write_atomic

    source = Path(args.report)
    formats = list(RENDERINGS) if args.format == "all" else [args.format]
    files = render_beside(read_report(args.report), source, formats)
    for path, text in files.values():
        if args.out and len(formats) == 1 and not Path(args.out).is_dir():
            target = Path(args.out)
        else:
            target = (Path(args.out) if args.out else source.parent) / path.name
        write_atomic(target, text)
        print(target)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``audit`` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return _run(argv)
    except AuditError as exc:
        print(f"audit: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("audit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

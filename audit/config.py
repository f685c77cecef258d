"""Typed run configuration, built from defaults, an optional YAML file and command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from audit.errors import AuditError

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "cosine", "onecycle")
COMPRESSIONS = ("quantize", "prune")
LARGE_BATCH = 1024
LARGE_BATCH_ROWS = 16384  # training sets this large default to LARGE_BATCH
SMALL_BATCH = 256  # the largest default batch below LARGE_BATCH_ROWS
MIN_BATCH = 16
BATCH_ROWS_SHARE = 10  # a small table's default batch is the power of two at or below a tenth of its rows
MIN_STEPS = 250  # default epochs give at least this many optimizer steps (Adult's 10 epochs give 290)
MIN_EPOCHS = 10
MAX_EPOCHS = 200  # a table of a few dozen rows would otherwise get thousands of one-step epochs
DEFAULT_PATIENCE = 3  # epochs; raised on small tables so that patience covers PATIENCE_STEPS
PATIENCE_STEPS = 80  # Adult (29 steps an epoch) keeps patience 3
MAX_SEED = 2**32 - 1


def default_batch_size(train_rows: int) -> int:
    """The core's batch size for this many training rows (see ``RunConfig.resolve``)."""
    if train_rows >= LARGE_BATCH_ROWS:
        return LARGE_BATCH
    # At least ~10 steps an epoch: at batch 256, 720 rows made 3 steps and 10 epochs left the majority class.
    power = 2 ** max(0, math.floor(math.log2(max(train_rows, 1) / BATCH_ROWS_SHARE)))
    return min(SMALL_BATCH, max(MIN_BATCH, power))


def steps_per_epoch(train_rows: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the last batch may be short)."""
    return max(1, math.ceil(train_rows / batch_size))


def default_epochs(train_rows: int, batch_size: int) -> int:
    """The core's epochs: at least ``MIN_EPOCHS``, and enough for ``MIN_STEPS`` steps (at most ``MAX_EPOCHS``)."""
    needed = math.ceil(MIN_STEPS / steps_per_epoch(train_rows, batch_size))
    return min(MAX_EPOCHS, max(MIN_EPOCHS, needed))


def default_patience(train_rows: int, batch_size: int) -> int:
    """The core's patience in epochs: at least ``DEFAULT_PATIENCE``, and at least ``PATIENCE_STEPS`` steps."""
    return max(DEFAULT_PATIENCE, math.ceil(PATIENCE_STEPS / steps_per_epoch(train_rows, batch_size)))


def parse_list(value: str, cast: Callable[[str], Any] = str, *, what: str = "values") -> list[Any]:
    """A comma-separated option value as a list (blanks dropped); ValueError names what was expected."""
    try:
        return [cast(part.strip()) for part in str(value).split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated {what}, got {value!r}") from None


def list_type(cast: Callable[[str], Any] = str, *, what: str = "values") -> Callable[[str], list[Any]]:
    """An argparse ``type`` for a comma-separated list: one line naming what was expected when a part is wrong."""

    def parse(value: str) -> list[Any]:
        try:
            return parse_list(value, cast, what=what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = what
    return parse


@dataclass(frozen=True)
class CliOption:
    """One command-line option a plugin adds: argparse flags and keyword arguments."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]
    commands: tuple[str, ...] = ("train", "evaluate")

    @property
    def dest(self) -> str:
        """The option's name in ``RunConfig.options``."""
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Command:
    """A subcommand a plugin adds: its arguments and the function that runs it.

    ``run(args, pm)`` gets the parsed arguments and the run's plugin manager; it returns an exit code.
    """

    name: str
    help: str
    add_arguments: Callable[[Any], None]
    run: Callable[[Any, Any], int]


@dataclass
class RunConfig:
    """Everything one run needs; plugin options live in ``options``."""

    command: str = "train"
    data: str | None = (
        "adult"  # None only for 'audit evaluate' without --data: the saved model's built-in data
    )
    target: str | None = None
    sensitive: list[str] = field(default_factory=list)
    categorical: list[str] = field(default_factory=list)
    numeric: list[str] = field(default_factory=list)
    drop_columns: list[str] = field(default_factory=list)
    drop_sensitive: bool = False
    positive_label: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    model: str = "auto"
    model_path: str | None = None
    # evaluate: the package.module:factory the user trusts to rebuild a model file's architecture (a model file
    # itself never chooses code to import)
    model_factory: str | None = None
    # evaluate, a model trained elsewhere: the state_dict for --model FACTORY, or a TorchScript/torch.export
    # program the user trusts (--program); its data's columns are the model's inputs as they are (features_ready)
    weights: str | None = None
    program: str | None = None
    features_ready: bool = False
    # the input columns in order (default: every column but the target and the sensitive ones)
    features: list[str] = field(default_factory=list)
    train_data: str | None = None  # the model's training rows, for the membership-inference audit
    hidden: list[int] = field(default_factory=lambda: [128, 64])
    channels: list[int] = field(default_factory=lambda: [16, 32])
    # Off by default: on the CPU, dropout's Bernoulli draws cost as much as the rest of a small MLP's
    # step, and with early stopping on Adult it bought nothing (0.8591 with 0.1, 0.8585 without).
    dropout: float = 0.0
    epochs: int | None = None  # None: enough for MIN_STEPS steps, at least MIN_EPOCHS (see resolve)
    batch_size: int | None = None  # None: LARGE_BATCH for large training sets, else by the rows (see resolve)
    lr: float | None = None  # None: 3e-3 at LARGE_BATCH, else 1e-3; or a plugin's default (DP-SGD: 3e-3)
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    warmup_epochs: float = 0.0
    step_size: int = 5
    gamma: float = 0.5
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    patience: int | None = DEFAULT_PATIENCE  # raised on small tables by resolve; None: no early stopping
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    compress: list[str] = field(default_factory=list)
    out: str | None = None
    quiet: bool = False
    config_file: str | None = None
    policy: str | None = None
    sign_key: str | None = None  # an Ed25519 private key (PEM) that signs the report; else $AUDIT_SIGN_KEY
    command_line: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    # Where each value that is not the built-in default came from ("command line", "config file FILE",
    # "plugin NAME", "model file", "data: ..."); option names of plugins are prefixed "options.".
    sources: dict[str, str] = field(default_factory=dict)
    resolved: bool = False

    def option(self, name: str, default: Any = None) -> Any:
        """Return a plugin option by its ``dest`` name."""
        return self.options.get(name, default)

    def default_options(self, defaults: dict[str, Any]) -> None:
        """Give each plugin option ({dest: value}) its default where the user left it unset."""
        for dest, value in defaults.items():
            if self.options.get(dest) is None:
                self.options[dest] = value

    def refuse_without(self, switch: str, flags: dict[str, str]) -> None:
        """Refuse options ({flag: dest}) given without the ``switch`` they belong to, in one line (exit code 2)."""
        given = [flag for flag, dest in flags.items() if self.option(dest) not in (None, False)]
        if given:
            raise AuditError(
                f"{', '.join(given)} only {'applies' if len(given) == 1 else 'apply'} with {switch}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as JSON-able data (its provenance is ``sources``, recorded apart)."""
        data = dataclasses.asdict(self)
        del data["sources"], data["resolved"]
        return data

    def set_from(self, source: str, **values: Any) -> None:
        """Set core fields and record where their values came from (a saved model, a plugin, the data)."""
        for name, value in values.items():
            setattr(self, name, value)
            self.sources[name] = source

    def resolve(self, *, train_rows: int, plugin_defaults: dict[str, tuple[Any, str]]) -> None:
        """Fill every core value left unset, once: a plugin's default (value, plugin name), else the core's.

        A value the user gave (flag or config file) always wins. The core's defaults depend on the training
        rows: large batches keep a small model's step from being Python overhead (Adult, 29k rows, at 1024 and
        3e-3: 0.859); small tables get smaller batches, epochs enough for ``MIN_STEPS`` optimizer steps and a
        patience of at least ``PATIENCE_STEPS`` steps, so that a 720-row table is trained past predicting its
        majority class.
        """
        if self.resolved:
            return
        unset = {f.name: f.default for f in dataclasses.fields(self)}
        for name, (value, plugin) in plugin_defaults.items():
            # the user's value wins: given as a flag or in a file (sources), or through the API (not the default)
            if name not in self.sources and getattr(self, name) == unset[name]:
                self.set_from(f"plugin {plugin}", **{name: value})
        self._resolve_schedule(train_rows)
        if self.lr is None:
            self.set_from(
                f"default for batch size {self.batch_size}",
                lr=3e-3 if self.batch_size >= LARGE_BATCH else 1e-3,
            )
        self.resolved = True

    def _resolve_schedule(self, train_rows: int) -> None:
        """Batch size, epochs and patience the user left unset, derived from the training rows."""
        if self.batch_size is None:
            self.set_from(
                f"default for {train_rows} training rows", batch_size=default_batch_size(train_rows)
            )
        steps = steps_per_epoch(train_rows, self.batch_size)
        if self.epochs is None:
            self.set_from(
                f"default for {train_rows} training rows at batch {self.batch_size} ({steps} steps an epoch): "
                f"at least {MIN_STEPS} steps and {MIN_EPOCHS} epochs, at most {MAX_EPOCHS} epochs",
                epochs=default_epochs(train_rows, self.batch_size),
            )
        if "patience" not in self.sources and self.patience == DEFAULT_PATIENCE:
            patience = default_patience(train_rows, self.batch_size)
            if patience != DEFAULT_PATIENCE:
                self.set_from(
                    f"default for {steps} steps an epoch: at least {PATIENCE_STEPS} steps without improvement",
                    patience=patience,
                )
        if not self.warmup_epochs < self.epochs:
            raise AuditError(
                f"--warmup-epochs must be below the epochs, got {self.warmup_epochs} with {self.epochs} epochs"
            )

    def validate(self) -> None:
        """Raise AuditError for a value no run can use, or an option given without the choice it belongs to."""
        self._check_ranges()
        self._check_choices()
        self._check_belongs()

    def _check_ranges(self) -> None:
        if self.epochs is not None and self.epochs < 1:
            raise AuditError(f"--epochs must be at least 1, got {self.epochs}")
        for name, sizes in (("hidden", self.hidden), ("channels", self.channels)):
            if any(size < 1 for size in sizes):
                raise AuditError(f"--{name} sizes must be at least 1, got {','.join(map(str, sizes))}")
        # written as "not (x in range)" so NaN fails too; inf is refused wherever a finite number is needed
        if not (0 <= self.weight_decay < math.inf):
            raise AuditError(f"--weight-decay must be a finite number >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not (0 < self.grad_clip < math.inf):
            raise AuditError(f"--grad-clip must be a finite positive number, got {self.grad_clip}")
        if not 0 <= self.momentum < 1:
            raise AuditError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.step_size < 1 or not (0 < self.gamma < math.inf):
            raise AuditError(
                f"--step-size must be at least 1 and --gamma positive, got {self.step_size} and {self.gamma}"
            )
        if not 0 <= self.warmup_epochs < (self.epochs or math.inf):  # default epochs: checked by resolve
            raise AuditError(
                f"--warmup-epochs must be in [0, --epochs), got {self.warmup_epochs} with {self.epochs} epochs"
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise AuditError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.lr is not None and not (0 < self.lr < math.inf):
            raise AuditError(f"--lr must be a finite positive number, got {self.lr}")
        if not 0 <= self.seed <= MAX_SEED:
            raise AuditError(f"--seed must be in [0, {MAX_SEED}] (NumPy's seed range), got {self.seed}")
        if self.patience is not None and self.patience < 1:
            raise AuditError(
                f"--patience must be at least 1 epoch (or --no-early-stopping), got {self.patience}"
            )

    def _check_choices(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise AuditError(
                f"--optimizer {self.optimizer!r} is unknown; expected one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise AuditError(
                f"--schedule {self.schedule!r} is unknown; expected one of {', '.join(SCHEDULES)}"
            )
        unknown = [c for c in self.compress if c not in COMPRESSIONS]
        if unknown:
            raise AuditError(
                f"--compress {','.join(unknown)!r} is unknown; expected a list of {', '.join(COMPRESSIONS)}"
            )
        if not 0 <= self.dropout < 1:
            raise AuditError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 <= self.label_smoothing < 1:
            raise AuditError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        for name in ("val_fraction", "test_fraction"):
            value = getattr(self, name)
            if not 0 < value < 0.5:
                raise AuditError(f"--{name.replace('_', '-')} must be in (0, 0.5), got {value}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise AuditError(f"--device {self.device!r} is unknown; expected auto, cpu or cuda[:N]")
        if self.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise AuditError(
                    f"--device {self.device} was asked for, but CUDA is not available here; use --device cpu"
                )

    def _check_belongs(self) -> None:
        # Options that only mean something under another option's choice: refused when given without it.
        belongs = {
            "momentum": ("--momentum", "--optimizer sgd or rmsprop", self.optimizer in ("sgd", "rmsprop")),
            "warmup_epochs": ("--warmup-epochs", "--schedule cosine", self.schedule == "cosine"),
            "step_size": ("--step-size", "--schedule step", self.schedule == "step"),
            "gamma": ("--gamma", "--schedule step", self.schedule == "step"),
            "drop_sensitive": (
                "--drop-sensitive",
                "--sensitive",
                bool(self.sensitive) or self.command != "train",
            ),
        }
        for name, (flag, needs, ok) in belongs.items():
            if name in self.sources and not ok:
                raise AuditError(f"{flag} only applies with {needs}")


FIELD_NAMES = {f.name for f in dataclasses.fields(RunConfig)}


def load_yaml_config(path: str) -> dict[str, Any]:
    """Read a YAML run configuration: a mapping of option names (as the flags, dashes or underscores)."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise AuditError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise AuditError(
            f"config file {path} must hold a mapping of option: value, got {type(data).__name__}"
        )
    return {str(key).replace("-", "_"): value for key, value in data.items()}


def build_config(
    values: dict[str, Any], plugin_options: dict[str, CliOption], *, sources: dict[str, str] | None = None
) -> RunConfig:
    """Build a RunConfig from merged option values; plugin options go to ``options``.

    ``sources`` names where each explicitly given value came from (a plugin option as ``options.<dest>``).
    """
    core: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for key, value in values.items():
        if key in FIELD_NAMES:
            core[key] = value
        elif key in plugin_options:
            options[key] = value
        else:
            raise AuditError(f"option {key!r} is unknown; expected a flag of 'audit train --help'")
    config = RunConfig(**core, options=options, sources=dict(sources or {}))
    config.validate()
    return config

"""The plugin contract: every hook a plugin may implement, grouped by the run's lifecycle.

A plugin is a module (or object) registered under the entry-point group ``audit.plugins``.
It implements any subset of these hooks with ``@audit.hookimpl``. Plugins never import
each other; what they share travels through the core's types (``RunConfig``,
``TrainingSetup``, ``EpochState``, ``EvalContext``, ``Section``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from audit.config import CliOption, Command, RunConfig
    from audit.engine import EpochState, TrainingSetup
    from audit.evaluation import EvalContext
    from audit.report import MetricSpec, Section

hookspec = pluggy.HookspecMarker("audit")
hookimpl = pluggy.HookimplMarker("audit")

# --- building the CLI -------------------------------------------------------------------


@hookspec
def audit_cli_options() -> list[CliOption]:
    """Return the command-line options this plugin adds to ``train`` and ``evaluate``.

    Called once while the parser is built. Results from all plugins are concatenated;
    two plugins declaring the same flag is an error at start-up.
    """


@hookspec
def audit_commands() -> list[Command]:
    """Return extra subcommands (e.g. ``audit decisions``) this plugin provides.

    Results are concatenated; a name already taken is an error at start-up.
    """


@hookspec
def audit_metric_specs() -> list[MetricSpec]:
    """Declare the metrics this plugin can produce: name pattern, direction, unit, tags.

    Results are concatenated. Gates, ``audit metrics`` and the compliance section read them.
    """


# --- configuring a run ------------------------------------------------------------------


@hookspec
def audit_configure(config: RunConfig) -> None:
    """Read this plugin's options from ``config.options`` and check them.

    Called for every plugin after parsing, before any data is read. Raise
    ``audit.AuditError`` with one line to reject a bad combination (CLI exit code 2).
    Return values are ignored.
    """


@hookspec
def audit_config_defaults(config: RunConfig) -> dict[str, Any] | None:
    """Return defaults for core options that this plugin's choices imply (DP-SGD: its learning rate).

    Called once after ``audit_configure``, before the core resolves its own defaults; a value the
    user set (flag or config file) always wins. The maps are merged; two plugins giving one option
    different values is an error. The report records which plugin set each value.
    """


# --- training ---------------------------------------------------------------------------


@hookspec
def audit_prepare_training(setup: TrainingSetup) -> None:
    """Edit the training setup in place before the first step.

    A plugin may replace ``setup.model``, ``setup.optimizer``, ``setup.batch_sampler``,
    set ``setup.sample_weights``, add ``setup.notes`` and keep its own state in
    ``setup.artifacts[<plugin name>]``. Every implementation is called; a plugin that
    must see the final objects (DP-SGD) is marked ``trylast``.
    """


@hookspec
def audit_after_epoch(state: EpochState) -> dict[str, float] | None:
    """Record per-epoch figures (epsilon spent, clipping rate, ...) at the end of an epoch.

    Return a flat ``{name: number}`` map or None. The maps from all plugins are merged
    into that epoch's row of the training history (names must not collide).
    """


@hookspec
def audit_after_training(setup: TrainingSetup) -> None:
    """Undo training-only wrappers (e.g. per-sample gradient hooks) once the loop has ended.

    Called once, before evaluation; every implementation runs; return values are ignored.
    """


# --- auditing ---------------------------------------------------------------------------


@hookspec
def audit_evaluate(ctx: EvalContext) -> Section | None:
    """Return this plugin's report section, or None when it is not active.

    Called after training (or on a loaded model for ``audit evaluate``). ``ctx`` holds
    what the core computed once for everyone: test logits, predictions, per-sample losses,
    sensitive features. Every returned section becomes part of the one report; each
    metric in ``section.metrics`` must start with the section's name.
    """


@hookspec
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    """Return JSON-able facts to store in the saved model (``model.pt``) for later audits.

    Called once after training. The maps from all plugins are merged (by plugin name) and
    come back as ``ctx.checkpoint_metadata`` when ``audit evaluate`` loads the model.
    """

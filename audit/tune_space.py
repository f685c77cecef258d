"""The search space of ``audit tune``: the default space, a YAML file that changes it (data only), and sampling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from audit.errors import AuditError

KINDS = ("float", "int", "categorical")
# Names a space may hold: core training options, and the mitigation options a plugin declares.
CORE_NAMES = (
    "lr",
    "batch_size",
    "hidden",
    "weight_decay",
    "optimizer",
    "patience",
    "dropout",
    "momentum",
    "label_smoothing",
    "epochs",
    "schedule",
)
DEFAULTS_FILE = Path(__file__).with_name("tune_space.yaml")


def _wanted(when: Any, *, sensitive: bool, options: dict[str, Any]) -> bool:
    """Whether a default entry's ``when`` holds for this command (no ``when``: always)."""
    if when is None:
        return True
    if when == "sensitive":
        return sensitive
    value = options.get(when["option"])
    return value == when["equals"] if "equals" in when else bool(value)


def default_space(*, sensitive: bool, options: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The default space (tune_space.yaml): the core's entries plus those of the mitigations the command turns on."""
    data = yaml.safe_load(DEFAULTS_FILE.read_text())
    space: dict[str, dict[str, Any]] = {}
    for name, spec in data["space"].items():
        # an option the command sets itself stays fixed: it is not searched
        if name in options or not _wanted(spec.get("when"), sensitive=sensitive, options=options):
            continue
        entry = {k: v for k, v in spec.items() if k != "when"}
        space[name] = check_entry(name, entry, str(DEFAULTS_FILE), {name}, earlier=space)
    return space


def trial_options() -> dict[str, Any]:
    """Plugin options every trial runs with, unless the command sets them (tune_space.yaml's trial_options)."""
    return dict(yaml.safe_load(DEFAULTS_FILE.read_text()).get("trial_options") or {})


def load_space(path: str, allowed: set[str]) -> dict[str, dict[str, Any]]:
    """Read a --space YAML file ({name: {kind, low, high, log} | {kind: categorical, choices}}) and check it."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"--space {path} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise AuditError(f"--space {path}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict) or not data:
        raise AuditError(f"--space {path}: expected a mapping of parameter name to {{kind, low, high}}")
    space: dict[str, dict[str, Any]] = {}
    for name, spec in data.items():
        space[str(name)] = check_entry(str(name), spec, path, allowed, earlier=space)
    return space


def _number(value: Any, where: str) -> float:
    # PyYAML reads 1e-4 (no dot) as text, so numbers written that way are accepted too.
    if isinstance(value, bool):
        raise AuditError(f"{where} is {value!r}; expected a number")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AuditError(f"{where} is {value!r}; expected a number") from None


def _given(spec: dict[str, Any], where: str, earlier: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``given: {param: NAME, equals: VALUE}`` checked: an earlier categorical entry and one of its choices."""
    given = spec.get("given")
    if given is None:
        return {}
    if (
        not isinstance(given, dict)
        or set(given) != {"param", "equals"}
        or not isinstance(given["param"], str)
    ):
        raise AuditError(f"{where}.given: expected {{param: NAME, equals: VALUE}}")
    parent = earlier.get(given["param"])
    if parent is None or parent["kind"] != "categorical" or given["equals"] not in parent["choices"]:
        raise AuditError(
            f"{where}.given: {given['param']!r} must be a categorical entry above this one with "
            f"{given['equals']!r} among its choices"
        )
    return {"given": dict(given)}


def check_entry(
    name: str, spec: Any, path: str, allowed: set[str], *, earlier: dict[str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """One space entry checked: a known option, a known kind, a valid range or choice list, and, for an entry drawn
    only when an earlier categorical entry takes a value (``given``), that entry and value."""
    where = f"--space {path}: {name}"
    if name not in allowed:
        raise AuditError(f"{where} is not a tunable option; expected one of {', '.join(sorted(allowed))}")
    if not isinstance(spec, dict) or spec.get("kind") not in KINDS:
        raise AuditError(f"{where} needs kind: {' | '.join(KINDS)}")
    given = _given(spec, where, earlier or {})
    if spec["kind"] == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices or any(isinstance(c, (dict, list)) for c in choices):
            raise AuditError(f"{where}: categorical needs choices: a non-empty list of plain values")
        for choice in choices:
            as_settings({name: choice})  # a hidden-size choice that is not "128,64" is refused now
        unknown = set(spec) - {"kind", "choices", "given"}
        if unknown:
            raise AuditError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected kind, choices, given")
        return {"kind": "categorical", "choices": choices} | given
    low, high = _number(spec.get("low"), f"{where}.low"), _number(spec.get("high"), f"{where}.high")
    log = bool(spec.get("log", False))
    if not low < high or (log and low <= 0):
        raise AuditError(f"{where}: expected low < high{' and low > 0 (log scale)' if log else ''}")
    if spec["kind"] == "int" and (low != int(low) or high != int(high)):
        raise AuditError(f"{where}: int needs whole-number low and high")
    unknown = set(spec) - {"kind", "low", "high", "log", "given"}
    if unknown:
        raise AuditError(f"{where}: unknown key {sorted(unknown)[0]!r}; expected kind, low, high, log, given")
    return {"kind": spec["kind"], "low": low, "high": high, "log": log} | given


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Draw one value per entry from an Optuna trial; ``hidden`` given as "128,64" becomes a list of ints. An entry
    with ``given`` is drawn only when its parameter took that value (Optuna's define-by-run conditional space)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        given = spec.get("given")
        if given is not None and params.get(given["param"]) != given["equals"]:
            continue
        if spec["kind"] == "categorical":
            value = trial.suggest_categorical(name, spec["choices"])
        elif spec["kind"] == "int":
            value = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=spec["log"])
        else:
            value = trial.suggest_float(name, spec["low"], spec["high"], log=spec["log"])
        params[name] = value
    return as_settings(params)


def as_settings(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as run settings (a hidden-size string such as "128,64" as a list of ints)."""
    settings = dict(params)
    if isinstance(settings.get("hidden"), (str, int)):
        try:
            settings["hidden"] = [int(part) for part in str(settings["hidden"]).split(",")]
        except ValueError:
            raise AuditError(
                f"--space hidden choice {settings['hidden']!r}: expected sizes such as 128,64"
            ) from None
    return settings

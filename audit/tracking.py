"""Logging a written report to MLflow (the optional ``rai-audit[mlflow]`` extra): one MLflow run per command.

The run holds the report's config as params, its flat metrics map (and the training history, one step per epoch)
as metrics, its files as artifacts, and tags for the gate's verdict, the rai-audit version, the command and the
report's digest. MLflow is imported here only, and only when ``--mlflow`` is given, so ``audit`` runs without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import os
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import __version__
from audit.errors import AuditError

# MLflow 2.x's default store. MLflow 3.7+ defaults to sqlite:///mlflow.db and 3.13+ refuses file stores unless
# MLFLOW_ALLOW_FILE_STORE=true; the extra resolves to mlflow-skinny 2.14 beside torchattacks' requests pin.
DEFAULT_URI = "./mlruns"
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"  # MLflow's own variable for the experiment to log into
DEFAULT_EXPERIMENT = "rai-audit"
NAME_MAP_ARTIFACT = "mlflow_names.json"
INSTALL_HINT = "pip install 'rai-audit[mlflow]'"
# mlflow-skinny has no database layer; mlflow 2.14's needs SQLAlchemy before 2.1 (full mlflow would downgrade numpy)
SQLITE_HINT = "pip install 'sqlalchemy<2.1' alembic"
ARTIFACTS_BESIDE_DB = "mlartifacts"  # the folder name MLflow's own server uses for artifacts
METRICS_PER_BATCH = 1000  # MLflow's limits for one log_batch call
PARAMS_PER_BATCH = 100
MAX_KEY_LENGTH = 250
FALLBACK_PARAM_LENGTH = 500  # MLflow's oldest limit on a param value, when it does not say its own
HISTORY_PREFIX = "history."

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tracking:
    """An opened MLflow store: its URI, a client, and the experiment runs go into."""

    uri: str
    client: Any
    experiment_id: str
    experiment: str


def add_mlflow_argument(parser: Any) -> None:
    """The ``--mlflow [TRACKING_URI]`` option of a command that writes a report."""
    parser.add_argument(
        "--mlflow",
        nargs="?",
        const=DEFAULT_URI,
        default=None,
        metavar="TRACKING_URI",
        help=f"log the report to MLflow (file store path, file: or sqlite:/// URI) [{DEFAULT_URI}]; "
        f"needs {INSTALL_HINT}",
    )


def open_tracking(uri: str | None) -> Tracking | None:
    """Check ``--mlflow`` before any work: MLflow imports and the store opens; else one line (exit 2)."""
    if uri is None:
        return None
    client_class = _client_class()
    name = os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    try:
        with _quiet_libraries():
            client = client_class(tracking_uri=uri)
            found = client.get_experiment_by_name(name)
            experiment_id = (
                found.experiment_id
                if found is not None
                else client.create_experiment(name, artifact_location=artifact_location(uri))
            )
    except Exception as exc:  # MLflow raises many types for a store it cannot open; each is bad input here
        hint = f"; sqlite:/// stores need {SQLITE_HINT}" if "sqlalchemy" in str(exc).lower() else ""
        raise AuditError(
            f"--mlflow {uri}: MLflow cannot open this tracking store: {_one_line(exc)}{hint}"
        ) from None
    return Tracking(uri=uri, client=client, experiment_id=experiment_id, experiment=name)


@contextlib.contextmanager
def _quiet_libraries() -> Iterator[None]:
    """No library chatter while a store opens or a run is logged: urllib3's line per retry (a server that is down
    gets one line from us), MLflow 3's FutureWarning, and the INFO lines of the migrations that create a sqlite
    database, whose logging config (MLflow's alembic env.py) also replaces the root logger's handlers: put back."""
    root = logging.getLogger()
    saved = [(logger, logger.level, logger.handlers[:]) for logger in (root, logging.getLogger("urllib3"))]
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level, handlers in saved:
            logger.setLevel(level)
            logger.handlers[:] = handlers
        logging.getLogger("alembic").setLevel(logging.WARNING)


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps artifacts: beside a sqlite database (MLflow would use ./mlruns of the working
    directory); None (MLflow's choice) for other stores."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///") :])
    return (database.resolve().parent / ARTIFACTS_BESIDE_DB).as_uri()


def _client_class() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mlflow-skinny 2.x imports pkg_resources, which warns
            from mlflow.tracking import MlflowClient
    except ImportError as exc:
        if (exc.name or "").split(".")[0] == "mlflow":
            raise AuditError(f"--mlflow needs MLflow, which is not installed: {INSTALL_HINT}") from None
        raise AuditError(f"--mlflow: MLflow failed to import ({_one_line(exc)}); {INSTALL_HINT}") from None
    return MlflowClient


def log_or_warn(
    tracking: Tracking | None, *, report: dict[str, Any], files: list[Path], command: str
) -> str | None:
    """Log a report already written to disk; an MLflow failure is one warning line, never a lost report."""
    if tracking is None:
        return None
    try:
        with _quiet_libraries():
            return log_report(tracking, report=report, files=files, command=command)
    except Exception as exc:  # the report is on disk already: a tracking failure must not turn into a crash
        log.warning(
            "MLflow logging to %s failed (%s); the report files are written", tracking.uri, _one_line(exc)
        )
        return None


def log_report(tracking: Tracking, *, report: dict[str, Any], files: list[Path], command: str) -> str:
    """Log one report as an MLflow run (params, metrics, history, artifacts, tags); return the run's id."""
    from mlflow.entities import Metric, Param

    client = tracking.client
    metrics = report.get("metrics", {})
    names = mlflow_names(metrics)
    params = flat_params(report)
    param_names = mlflow_names(params)
    run = client.create_run(
        tracking.experiment_id, run_name=report.get("run", {}).get("name"), tags=run_tags(report, command)
    )
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        rows = [Metric(names[k], float(v), now, 0) for k, v in metrics.items() if _number(v)]
        rows += [Metric(name, value, now, step) for name, value, step in history_metrics(report)]
        for start in range(0, len(rows), METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=rows[start : start + METRICS_PER_BATCH])
        pairs = [Param(param_names[k], v) for k, v in params.items()]
        for start in range(0, len(pairs), PARAMS_PER_BATCH):
            client.log_batch(run_id, params=pairs[start : start + PARAMS_PER_BATCH])
        _log_artifacts(client, run_id, files, {**_changed(names), **_changed(param_names)})
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    return run_id


def _log_artifacts(client: Any, run_id: str, files: list[Path], renamed: dict[str, str]) -> None:
    for path in files:
        client.log_artifact(run_id, str(path))
    with tempfile.TemporaryDirectory() as folder:
        mapping = Path(folder) / NAME_MAP_ARTIFACT
        mapping.write_text(json.dumps(dict(sorted(renamed.items())), indent=2) + "\n")
        client.log_artifact(run_id, str(mapping))


def run_tags(report: dict[str, Any], command: str) -> dict[str, str]:
    """The run's tags: rai-audit version, command, report digest and, when gated, ``audit.gate`` = pass/fail."""
    tags = {
        "audit.version": __version__,
        "audit.command": command,
        "audit.report_sha256": str(report.get("content_sha256", "")),
    }
    passed = report.get("metrics", {}).get("gate.passed")
    if passed is not None:
        tags["audit.gate"] = "pass" if passed else "fail"
    return tags


def flat_params(report: dict[str, Any]) -> dict[str, str]:
    """The run's resolved config as MLflow params: nested keys dotted, lists comma-joined, values cut to MLflow's limit.

    A report without a config (``audit decisions``) gives its run facts instead.
    """
    run = report.get("run", {})
    source = run.get("config") or {k: v for k, v in run.items() if k not in ("versions", "started_at")}
    limit = _param_limit()
    flat: dict[str, str] = {}
    for key, value in _flatten(source, ""):
        text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        flat[key] = text if len(text) <= limit else text[: limit - 3] + "..."
    return flat


def _flatten(value: Any, prefix: str) -> Iterable[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            yield from _flatten(inner, f"{prefix}{key}.")
    elif prefix:
        yield prefix[:-1], value


def history_metrics(report: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step) for every number of the performance section's per-epoch history (step = epoch)."""
    section = next((s for s in report.get("sections", []) if s.get("name") == "performance"), None)
    history = (section or {}).get("data", {}).get("history") or []
    columns = mlflow_names({k: None for record in history for k in record if k != "epoch"})
    return [
        (HISTORY_PREFIX + columns[key], float(value), int(record.get("epoch", index + 1)))
        for index, record in enumerate(history)
        for key, value in record.items()
        if key != "epoch" and _number(value)
    ]


def mlflow_names(names: Iterable[str]) -> dict[str, str]:
    """Each name as MLflow accepts it, the same for the same set of names: characters outside ``A-Za-z0-9_.-`` become
    ``_``; a name that changed and meets another, or is over 250 characters, gets 8 hex digits of its SHA-256."""
    names = list(names)
    safe = {
        name: "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in name)
        for name in names
    }
    claimed: dict[str, int] = {}
    for value in safe.values():
        claimed[value] = claimed.get(value, 0) + 1
    out = {}
    for name, value in safe.items():
        if (value != name and claimed[value] > 1) or len(value) > MAX_KEY_LENGTH:
            value = f"{value[: MAX_KEY_LENGTH - 9]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        out[name] = value
    return out


def _changed(names: dict[str, str]) -> dict[str, str]:
    """{MLflow name: report name} for the names MLflow could not take as they are."""
    return {new: old for old, new in names.items() if new != old}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _param_limit() -> int:
    try:
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
    except ImportError:
        return FALLBACK_PARAM_LENGTH
    return int(MAX_PARAM_VAL_LENGTH)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__

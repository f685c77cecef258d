"""The end of every command that writes files: MLflow logging (``--mlflow``) and one line naming the files written."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

MODEL_FILE = "model.pt"
MODEL_CARD = "model_card.md"


def set_files(report_path: Path, report: dict[str, Any], *, skip: Iterable[str] = ()) -> list[Path]:
    """A report's set as written: the model (when listed), the report, its HTML, Markdown, then the model card."""
    skip = set(skip)
    listed = [name for name in report.get("manifest", {}) if name not in skip]
    first = [name for name in listed if name == MODEL_FILE]
    rest = sorted(
        (n for n in listed if n != MODEL_FILE), key=lambda n: (n == MODEL_CARD, not n.endswith(".html"), n)
    )
    return [Path(report_path).parent / name for name in [*first, Path(report_path).name, *rest]]


def written_line(paths: Sequence[Path]) -> str:
    """One line naming every file written: ``wrote runs/adult/{model.pt, report.json}`` (a group per folder)."""
    folders: dict[Path, list[str]] = {}
    for path in paths:
        folders.setdefault(Path(path).parent, []).append(Path(path).name)
    parts = [
        str(folder / names[0]) if len(names) == 1 else f"{folder}/{{{', '.join(names)}}}"
        for folder, names in folders.items()
    ]
    return "wrote " + "; ".join(parts)


def finish_command(
    written: Sequence[Path],
    *,
    report: dict[str, Any],
    command: str,
    tracking: Any,
    quiet: bool,
    artifacts: Sequence[Path] | None = None,
) -> None:
    """Log the written report to MLflow (with ``--mlflow``), then name the files written and the MLflow run.

    ``artifacts``: the files to log when they are not just the ones written (the gate logs the report it gated).
    """
    from audit.tracking import log_or_warn

    files = list(written if artifacts is None else artifacts)
    run_id = log_or_warn(tracking, report=report, files=files, command=command)
    if quiet:
        return
    if written:
        print(written_line(written))
    if run_id is not None:
        print(f"mlflow: run {run_id} in experiment {tracking.experiment!r} at {tracking.uri}")

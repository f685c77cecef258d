"""Where a run's files go and how they are written: the model, report.json and its renderings as one set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from audit.config import RunConfig
from audit.render import render_beside
from audit.report import Report, write_atomic


def default_out_dir(config: RunConfig) -> Path:
    """``runs/<data name>`` (``-eval`` for evaluate) unless --out says otherwise."""
    if config.out:
        return Path(config.out)
    stem = Path(config.data).stem if config.data not in ("adult", "digits") else config.data
    return Path("runs") / (stem + ("-eval" if config.command == "evaluate" else ""))


def write_outputs(out_dir: Path, report: Report, model_bytes: bytes | None) -> dict[str, Any]:
    """Write model.pt, report.json and its renderings (HTML, Markdown, model card), each atomically."""
    data = report.to_dict()
    files = render_beside(data, out_dir / "report.json")  # rendered first: a failure leaves no file behind
    if model_bytes is not None:
        write_atomic(out_dir / "model.pt", model_bytes)
    write_atomic(out_dir / "report.json", json.dumps(data, indent=2, allow_nan=False))
    for path, text in files.values():
        write_atomic(path, text)
    return data

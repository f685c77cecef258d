"""What makes a run checkable: package versions, hashes, and the run's facts recorded in the report."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shlex
import sys
from importlib import metadata
from typing import Any

import torch

from audit.config import RunConfig
from audit.data import Dataset
from audit.outputs import default_out_dir

VERSIONED_PACKAGES = (
    "rai-audit",
    "torch",
    "opacus",
    "fairlearn",
    "torchattacks",
    "scikit-learn",
    "numpy",
    "pandas",
)


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as hex."""
    return hashlib.sha256(data).hexdigest()


def run_info(
    config: RunConfig, dataset: Dataset, device: torch.device, started: dt.datetime
) -> dict[str, Any]:
    """The ``run`` block of a report: command, seed, device, versions, config and the data's facts and hash."""
    config_json = json.dumps(config.to_dict(), sort_keys=True, default=str)
    return {
        "name": default_out_dir(config).name,
        "command": config.command,
        "command_line": shlex.join(config.command_line) if config.command_line else shlex.join(sys.argv),
        "seed": config.seed,
        "device": str(device),
        "started_at": started.isoformat(timespec="seconds"),
        "versions": package_versions(),
        "config": config.to_dict(),
        "config_sha256": sha256_hex(config_json.encode()),
        # every value not listed here is the built-in default
        "config_sources": dict(sorted(config.sources.items())),
        "data": {
            "name": dataset.name,
            "source": config.data,
            "sha256": dataset.fingerprint,
            "kind": dataset.kind,
            "split": dataset.split_source,
            "rows": {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)},
            "target": dataset.target,
            "classes": dataset.classes,
            "positive_label": dataset.positive_label,
            "sensitive": dataset.sensitive,
            "features": len(dataset.feature_names),
            "missing_values": dataset.missing_counts,
        },
    }

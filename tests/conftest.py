"""Shared fixtures: run the real CLI in-process, and small data sets made by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from audit.cli import main


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def cli(capsys):
    """Run ``audit ARGS`` through the real entry point; return exit code and captured output."""

    def run(*args: str) -> CliResult:
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def make_loans(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A small loans table: numeric and categorical features, a binary target that depends on them and on sex."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    income = rng.normal(50, 15, n)
    age = rng.integers(18, 80, n)
    purpose = rng.choice(["car", "home", "edu"], n)
    logit = 0.08 * (income - 50) + 0.6 * (sex == "M") - 0.5 * (purpose == "edu")
    defaulted = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    frame = pd.DataFrame(
        {"income": income, "age": age, "purpose": purpose, "sex": sex, "defaulted": defaulted}
    )
    frame.loc[rng.choice(n, 10, replace=False), "income"] = np.nan
    return frame


@pytest.fixture
def loans_csv(tmp_path: Path) -> Path:
    path = tmp_path / "loans.csv"
    make_loans().to_csv(path, index=False)
    return path


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def undeclared_metrics(metrics: dict) -> list[str]:
    """Metric names of a report that no metric spec (core, gate, compliance or plugin) declares."""
    import fnmatch

    from audit.compliance import collect_metric_specs
    from audit.plugins import get_plugin_manager
    from audit.report import interval_base

    patterns = [s.name for s in collect_metric_specs(get_plugin_manager())]
    return [
        name
        for name in metrics
        if interval_base(name) is None and not any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]

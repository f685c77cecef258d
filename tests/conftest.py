"""Shared fixtures: run the real CLI in-process, and small data sets made by the tests."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

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

    from audit.plugins import collect_metric_specs, get_plugin_manager
    from audit.report import interval_base

    patterns = [s.name for s in collect_metric_specs(get_plugin_manager())]
    return [
        name
        for name in metrics
        if interval_base(name) is None and not any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


def assert_bad_input(result: CliResult, *not_written: Path, says: str = "") -> None:
    """The bad-input contract: exit 2, exactly one line on stderr naming the problem, no traceback, nothing written."""
    assert result.code == 2, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err and lines[0].startswith("audit: error: "), result.err
    assert says in lines[0], (says, lines[0])
    for path in not_written:
        assert not Path(path).exists(), f"{path} was written"


def small_setup(config, data):
    """The default TrainingSetup for a tiny model (MLP 16 or CNN 8,8) on ``data``, schedule attached."""
    from audit.models import model_spec
    from audit.training import attach_scheduler, build_setup, seed_everything

    generator = seed_everything(config.seed)
    spec = model_spec(
        name="auto",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden=[16],
        channels=[8, 8],
        dropout=0.0,
    )
    setup = build_setup(config, data, torch.device("cpu"), generator, spec)
    attach_scheduler(setup)
    return setup


@pytest.fixture(scope="module")
def loans_data(tmp_path_factory):
    """A 2,000-row loans table loaded as a Dataset (sensitive: sex)."""
    from audit.config import RunConfig
    from audit.data import load_dataset

    path = tmp_path_factory.mktemp("d") / "loans.csv"
    make_loans(2000).to_csv(path, index=False)
    return load_dataset(RunConfig(data=str(path), target="defaulted", sensitive=["sex"]))


def install_plugin(folder: Path, name: str, source: str) -> dict[str, str]:
    """Install ``source`` as a third-party plugin ``name`` (a module and an entry point) in ``folder``.

    Returns the environment under which a subprocess finds it, exactly as pip-installed plugins are found.
    """
    import os

    (folder / f"{name}_plugin.py").write_text(source)
    dist = folder / f"{name}_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[audit.plugins]\n{name} = {name}_plugin\n")
    return {**os.environ, "PYTHONPATH": f"{folder}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def run_audit(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m audit.cli ARGS`` in a subprocess (a plugin or environment of its own), output captured."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "audit.cli", *map(str, args)], capture_output=True, text=True, env=env
    )


def make_mixed_table(
    n: int, *, numeric: int, categorical: int, positive_rate: float = 0.3, signal: float = 1.6, seed: int = 0
) -> pd.DataFrame:
    """A table with a logistic ground truth over mixed columns (so a LogisticRegression is a fair reference).

    Numeric columns have mixed scales and some are skewed; categorical ones have 2-5 levels; a third of the
    columns carry no signal; the target ``target`` ("bad"/"good") is drawn from the logistic probabilities
    (the noise), with an intercept that gives ``positive_rate`` "bad" rows; ``signal`` is the logit's spread."""
    rng = np.random.default_rng(seed)
    columns, logit = {}, np.zeros(n)
    for j in range(numeric):
        z = rng.normal(0, 1, n)
        raw = np.exp(z) if j % 3 == 2 else z
        scale = [1.0, 10.0, 1000.0, 0.1][j % 4]
        columns[f"num{j}"] = np.round(raw * scale + 5 * scale, 3)
        weight = rng.normal(0, 0.8) if j < max(2, numeric * 2 // 3) else 0.0
        logit += weight * (raw - raw.mean()) / raw.std()
    for j in range(categorical):
        levels = int(rng.integers(2, 6))
        idx = rng.choice(levels, n, p=rng.dirichlet(np.full(levels, 2.0)))
        columns[f"cat{j}"] = np.array([f"c{j}_{v}" for v in range(levels)])[idx]
        effect = rng.normal(0, 0.6, levels) if j < max(1, categorical * 2 // 3) else np.zeros(levels)
        logit += effect[idx]
    logit = signal * (logit - logit.mean()) / logit.std()
    lo, hi = -10.0, 10.0  # bisect the intercept for the wanted share of positives
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(logit + mid)))).mean() < positive_rate else (lo, mid)
    positive = rng.random(n) < 1 / (1 + np.exp(-(logit + lo)))
    return pd.DataFrame({**columns, "target": np.where(positive, "bad", "good")})


def robustness_section_of_a_linear_model(config, *, steps: int, constant_class: int | None = None):
    """The robustness plugin's section for a linear model fitted ``steps`` full-batch Adam steps on ``config``'s data,
    called without the runner (``config``'s plugin options already configured). ``constant_class``: instead, a model
    that ignores its input and always predicts that class."""
    from audit.data import load_dataset
    from audit.evaluation import build_context
    from audit_plugins.robustness import audit_evaluate

    dataset = load_dataset(config)
    torch.manual_seed(0)
    model = torch.nn.Linear(dataset.input_shape[0], 2)
    if constant_class is not None:
        with torch.no_grad():
            model.weight.zero_()
            model.bias.copy_(torch.nn.functional.one_hot(torch.tensor(constant_class), 2).float())
        steps = 0
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(dataset.train.x), dataset.train.y).backward()
        optimizer.step()
    ctx = build_context(
        config=config,
        dataset=dataset,
        model=model.eval(),
        device=torch.device("cpu"),
        training=None,
        artifacts={},
        checkpoint_metadata={},
    )
    return audit_evaluate(ctx)

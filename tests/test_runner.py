"""audit.runner: plugin defaults merged (and conflicts refused), sections in order, the report finalized, one run."""

from __future__ import annotations

import json

import pluggy
import pytest
import torch

from audit import hookimpl, hookspecs
from audit.config import RunConfig
from audit.data import load_dataset
from audit.errors import AuditError
from audit.evaluation import build_context
from audit.models import build_model, model_spec
from audit.plugins import get_plugin_manager
from audit.provenance import sha256_hex
from audit.report import Report, Section
from audit.runner import collect_sections, finalize_report, plugin_defaults, run_evaluate, run_train
from tests.conftest import make_loans


def fresh_pm(**plugins) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("audit")
    pm.add_hookspecs(hookspecs)
    for name, plugin in plugins.items():
        pm.register(plugin, name=name)
    return pm


class Defaults:
    """A tiny plugin giving core defaults (or None: no opinion)."""

    def __init__(self, values):
        self.values = values

    @hookimpl
    def audit_config_defaults(self, config):
        return self.values


# --- plugin_defaults ------------------------------------------------------------------------


def test_plugin_defaults_merge_and_name_their_plugin():
    pm = fresh_pm(alpha=Defaults({"lr": 0.01}), beta=Defaults({"epochs": 3}), quiet=Defaults(None))
    assert plugin_defaults(RunConfig(), pm) == {"lr": (0.01, "alpha"), "epochs": (3, "beta")}


def test_plugins_agreeing_on_a_value_is_no_conflict():
    pm = fresh_pm(alpha=Defaults({"lr": 0.01}), beta=Defaults({"lr": 0.01}))
    merged = plugin_defaults(RunConfig(), pm)
    assert set(merged) == {"lr"} and merged["lr"][0] == 0.01 and merged["lr"][1] in ("alpha", "beta")


def test_two_plugins_giving_different_values_is_refused():
    pm = fresh_pm(alpha=Defaults({"batch_size": 64}), beta=Defaults({"batch_size": 128}))
    with pytest.raises(AuditError) as info:
        plugin_defaults(RunConfig(), pm)
    message = str(info.value)
    assert "alpha" in message and "beta" in message and "64" in message and "128" in message
    assert "give --batch-size explicitly" in message


def test_plugin_defaults_see_the_config():
    class OnlyWhenAsked:
        @hookimpl
        def audit_config_defaults(self, config):
            return {"lr": 0.5} if config.option("fast") else None

    pm = fresh_pm(fast=OnlyWhenAsked())
    assert plugin_defaults(RunConfig(), pm) == {}
    assert plugin_defaults(RunConfig(options={"fast": True}), pm) == {"lr": (0.5, "fast")}


def test_the_privacy_plugin_gives_dp_sgds_lr_and_a_disagreeing_plugin_is_refused():
    pm = get_plugin_manager()
    assert plugin_defaults(RunConfig(), pm) == {}  # no --dp: no opinion
    dp = RunConfig(options={"dp": True})
    assert plugin_defaults(dp, pm) == {"lr": (3e-3, "privacy")}
    pm.register(Defaults({"lr": 1e-2}), name="mine")
    with pytest.raises(AuditError, match="privacy.*mine|mine.*privacy"):
        plugin_defaults(dp, pm)


# --- collect_sections -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    path = tmp_path_factory.mktemp("runner") / "loans.csv"
    make_loans(300).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def ctx(loans):
    config = RunConfig(data=str(loans), target="defaulted", quiet=True)
    dataset = load_dataset(config)
    torch.manual_seed(0)
    spec = model_spec(
        name="mlp",
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=[4],
        channels=[],
        dropout=0.0,
    )
    return build_context(
        config=config,
        dataset=dataset,
        model=build_model(spec).eval(),
        device=torch.device("cpu"),
        training=None,
        artifacts={},
        checkpoint_metadata={},
    )


class Producer:
    """A tiny plugin returning one section at a given order (or none)."""

    def __init__(self, name, order):
        self.name, self.order = name, order

    @hookimpl
    def audit_evaluate(self, ctx):
        if self.order is None:
            return None
        section = Section(self.name, self.name.title(), order=self.order)
        section.add_metric("rows", len(ctx.test_y))
        return section


def test_collect_sections_orders_by_order_and_drops_none(ctx):
    pm = fresh_pm(
        late=Producer("late", 80),
        early=Producer("early", 15),
        idle=Producer("idle", None),
        mid=Producer("mid", 40),
    )
    sections = collect_sections(pm, ctx)
    assert [s.name for s in sections] == ["early", "mid", "late"]
    assert all(s.metrics[f"{s.name}.rows"] == len(ctx.test_y) for s in sections)


# --- finalize_report ----------------------------------------------------------------------------


def _report() -> Report:
    report = Report(run={"name": "t"})
    efficiency = Section("efficiency", "Efficiency", order=20)
    efficiency.add_metric("params", 100)
    efficiency.add_metric("latency_ms_p50", 0.2)
    performance = Section("performance", "Performance", order=10)
    performance.add_proportion("accuracy", 80, 100)
    performance.add_metric("log_loss", 0.4)
    for section in (efficiency, performance):  # added out of order
        report.add_section(section)
    return report


def test_finalize_without_policy_adds_compliance_orders_sections_and_marks_headlines():
    report = _report()
    finalize_report(report, pm=get_plugin_manager(), policy=None)
    assert [s.name for s in report.sections] == ["performance", "efficiency", "compliance"]
    assert report.section("gate") is None and "gate.passed" not in report.metrics
    assert "compliance.clauses_without_evidence" in report.metrics
    assert report.section("performance").headline == [
        "performance.accuracy"
    ]  # not its interval, not log_loss
    assert report.section("efficiency").headline == ["efficiency.latency_ms_p50"]
    clauses = {c["id"]: c for c in report.section("compliance").data["clauses"]}
    assert clauses["EU AI Act Art. 15"]["verdict"] == "not gated"
    assert clauses["EU AI Act Art. 15"]["producers"] == ["performance"]


@pytest.mark.parametrize(("threshold", "passed", "verdict"), [(0.7, 1, "PASS"), (0.9, 0, "FAIL")])
def test_finalize_with_policy_adds_the_gate_and_its_verdicts(tmp_path, threshold, passed, verdict):
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"rules:\n  - performance.accuracy >= {threshold}\n")
    report = _report()
    finalize_report(report, pm=get_plugin_manager(), policy=str(policy))
    assert [s.name for s in report.sections] == ["performance", "efficiency", "gate", "compliance"]
    assert report.metrics["gate.passed"] == passed
    assert report.section("gate").headline == ["gate.passed"]
    assert report.run["policy_sha256"] == sha256_hex(policy.read_bytes())
    clauses = {c["id"]: c for c in report.section("compliance").data["clauses"]}
    assert clauses["EU AI Act Art. 15"]["verdict"] == verdict


# --- one run through the API -----------------------------------------------------------------


def test_run_train_then_evaluate_through_the_api(loans, tmp_path):
    pm = get_plugin_manager()
    config = RunConfig(
        data=str(loans), target="defaulted", epochs=1, hidden=[8], quiet=True, out=str(tmp_path / "t")
    )
    outcome = run_train(config, pm)
    assert outcome.out_dir == tmp_path / "t"
    assert json.loads((outcome.out_dir / "report.json").read_text()) == outcome.report
    orders = [s["order"] for s in outcome.report["sections"]]
    assert orders == sorted(orders) and outcome.report["sections"][0]["name"] == "performance"
    assert outcome.report["run"]["model_sha256"] == sha256_hex((outcome.out_dir / "model.pt").read_bytes())
    assert config.resolved and config.sources["lr"] == f"default for batch size {config.batch_size}"

    again = RunConfig(
        command="evaluate",
        data=str(loans),
        model_path=str(outcome.out_dir / "model.pt"),
        quiet=True,
        out=str(tmp_path / "e"),
    )
    evaluated = run_evaluate(again, get_plugin_manager())
    assert evaluated.report["run"]["command"] == "evaluate"
    assert evaluated.report["run"]["model_sha256"] == outcome.report["run"]["model_sha256"]
    assert not (evaluated.out_dir / "model.pt").exists()
    # a user's file given to evaluate is one evaluation split: every row is audited
    assert evaluated.report["metrics"]["performance.test_rows"] == 300


def test_evaluate_runs_one_path_for_a_module_trained_elsewhere_and_can_write_nothing(tmp_path, monkeypatch):
    from tests.elsewhere import FEATURES, ready_tables

    monkeypatch.chdir(tmp_path)
    train, test = ready_tables(400)
    model = torch.nn.Sequential(torch.nn.Linear(len(FEATURES), 2)).eval()
    config = RunConfig(
        command="evaluate", data="frame", target="label", sensitive=["sex"], features_ready=True, quiet=True
    )
    outcome = run_evaluate(
        config, get_plugin_manager(), module=model, frames={"data": test, "train_data": train}, write=False
    )
    assert list(tmp_path.iterdir()) == []  # nothing written
    names = [s["name"] for s in outcome.report["sections"]]
    assert names[:2] == ["performance", "efficiency"] and "compliance" in names
    with torch.no_grad():
        expected = (model(torch.tensor(test[FEATURES].to_numpy())).argmax(1).numpy() == test["label"]).mean()
    assert outcome.report["metrics"]["performance.accuracy"] == pytest.approx(expected)
    assert outcome.built.metrics == outcome.report["metrics"]

"""audit.compression: the compressed models audited like the original, the changes and their intervals, the specs."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pluggy
import pytest
import torch
from torch import nn

from audit import hookspecs
from audit.compression import (
    MARGINAL,
    PAIRED,
    SECTION_ORDER,
    StraightThrough,
    change_rows,
    compressed_models,
    compression_section,
    compression_specs,
    float_shadow,
    paired_change,
)
from audit.config import RunConfig
from audit.efficiency import SECTION_ORDER as EFFICIENCY_ORDER
from audit.efficiency import quantize_dynamic_int8
from audit.evaluation import build_context
from audit.gate import renamed_metric
from audit.hookspecs import hookimpl
from audit.intervals import clopper_pearson
from audit.plugins import DEFAULT_PLUGINS, collect_metric_specs, get_plugin_manager
from audit.report import MetricSpec, Report, Section, spec_for
from tests.conftest import make_loans, read_report, small_setup, undeclared_metrics

# torch's deprecation note on the eager int8 kernels (the CLI silences it too)
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)).eval()


def test_straight_through_gives_the_int8_values_and_the_shadow_gradients():
    model = tiny_mlp()
    int8 = quantize_dynamic_int8(model)
    shadow = float_shadow(model, int8)
    wrapped = StraightThrough(int8, shadow)
    x = torch.randn(64, 6)
    with torch.no_grad():
        exact = int8(x)
        assert torch.equal(wrapped(x), exact)
    x_grad = x.clone().requires_grad_(True)
    out = wrapped(x_grad)
    assert torch.allclose(out, exact)  # the value under autograd is still the int8 model's
    out[:, 1].sum().backward()
    x_shadow = x.clone().requires_grad_(True)
    shadow(x_shadow)[:, 1].sum().backward()
    assert torch.allclose(x_grad.grad, x_shadow.grad)
    assert x_grad.grad.abs().sum() > 0


def test_float_shadow_holds_the_dequantised_int8_weights():
    model = tiny_mlp()
    int8 = quantize_dynamic_int8(model)
    shadow = float_shadow(model, int8)
    assert torch.equal(shadow[0].weight, int8[0].weight().dequantize())
    assert not torch.equal(shadow[0].weight, model[0].weight)  # int8 rounding moved the weights
    assert torch.equal(model[0].weight, tiny_mlp()[0].weight)  # the original is untouched


def test_compressed_models_run_int8_on_the_cpu_and_prune_half():
    quantized, pruned = compressed_models(tiny_mlp(), ["quantize", "prune"], torch.device("cpu"))
    assert (quantized.kind, quantized.label, quantized.device.type) == ("quantize", "int8", "cpu")
    assert isinstance(quantized.model, StraightThrough)
    weights = [m.weight for m in pruned.model.modules() if isinstance(m, nn.Linear)]
    zeros = sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
    assert pruned.label == "pruned" and zeros == pytest.approx(0.5, abs=0.01)


def test_paired_change_counts_discordant_rows_with_bonferroni_exact_bounds():
    before = np.array([True] * 90 + [False] * 10)
    after = before.copy()
    after[:6] = False  # 6 rows lost
    after[90:92] = True  # 2 rows gained
    change, low, high, gained, lost = paired_change(before, after)
    assert (gained, lost) == (2, 6) and change == pytest.approx(-0.04)
    gained_ci, lost_ci = clopper_pearson(2, 100, 0.975), clopper_pearson(6, 100, 0.975)
    assert low == pytest.approx(gained_ci[0] - lost_ci[1]) and high == pytest.approx(
        gained_ci[1] - lost_ci[0]
    )
    assert low < change < high


def test_paired_interval_is_narrower_than_the_unpaired_one_when_few_rows_change():
    rng = np.random.default_rng(0)
    before = rng.random(5000) < 0.85
    after = before.copy()
    after[:20] = ~after[:20]
    _, low, high, _, _ = paired_change(before, after)
    a, b = clopper_pearson(int(before.sum()), 5000), clopper_pearson(int(after.sum()), 5000)
    assert high - low < (b[1] - a[0]) - (b[0] - a[1])


def test_paired_interval_covers_the_true_change_at_least_95_percent():
    rng = np.random.default_rng(1)
    misses = 0
    for _ in range(400):  # true change: P(gain) - P(loss) = 0.01 - 0.03
        u = rng.random(2000)
        before = u > 0.15
        after = before.copy()
        flip = rng.random(2000)
        after[before & (flip < 0.03 / 0.85)] = False
        after[~before & (flip < 0.01 / 0.15)] = True
        _, low, high, _, _ = paired_change(before, after)
        misses += not (low <= -0.02 <= high)
    assert misses / 400 <= 0.05


def test_change_rows_combine_both_intervals_and_skip_bounds_and_missing():
    original = {"s.acc": 0.8, "s.acc.ci_low": 0.75, "s.acc.ci_high": 0.85, "s.rate": 0.3, "s.gone": None}
    compressed = {"s.acc": 0.7, "s.acc.ci_low": 0.64, "s.acc.ci_high": 0.76, "s.rate": 0.35, "s.gone": 0.1}
    rows = {r["metric"]: r for r in change_rows(original, compressed)}
    assert set(rows) == {"s.acc", "s.rate"}
    assert rows["s.acc"]["change"] == pytest.approx(-0.1) and rows["s.acc"]["interval"] == MARGINAL
    assert rows["s.acc"]["ci_low"] == pytest.approx(0.64 - 0.85)
    assert rows["s.acc"]["ci_high"] == pytest.approx(0.76 - 0.75)
    assert rows["s.rate"]["interval"] is None and rows["s.rate"]["ci_low"] is None
    assert rows["s.rate"]["area"] == "s"


def test_compression_specs_keep_direction_unit_and_former_names():
    base = [
        MetricSpec("performance.accuracy", True, "fraction", "Top-1 accuracy"),
        MetricSpec("x.*.gap", False, "fraction", "A gap", former_names=("x.*.old_gap",)),
    ]
    specs = compression_specs(base)
    names = {s.name: s for s in specs}
    assert names["compression.*.performance.accuracy"].higher_is_better is True
    assert names["compression.*.change.x.*.gap"].higher_is_better is False
    assert all(not s.tags for s in specs)
    assert [s.name for s in specs if s.headline] == ["compression.*.change.performance.accuracy"]
    assert spec_for("compression.prune.change.sex.group.F.accuracy", specs).higher_is_better is True
    assert renamed_metric("compression.quantize.x.sex.old_gap", specs) == "compression.quantize.x.sex.gap"


def test_the_spec_wrapper_derives_from_every_plugin_spec():
    pm = get_plugin_manager()
    if "compression" not in DEFAULT_PLUGINS:  # the lead registers it in audit/plugins.py; until then, by hand
        pm.register(importlib.import_module("audit.default_plugins.compression"), name="compression")
    specs = collect_metric_specs(pm)
    assert spec_for("compression.quantize.performance.accuracy", specs).higher_is_better is True
    assert spec_for("compression.quantize.change.performance.log_loss", specs).higher_is_better is False
    plain = [s.name for s in specs if not s.name.startswith("compression.")]
    assert all(f"compression.*.{name}" in {s.name for s in specs} for name in plain)


class GroupRatePlugin:
    """A third-party plugin the core has never heard of: one proportion with an interval."""

    @hookimpl
    def audit_evaluate(self, ctx):
        section = Section("thirdparty", "Third party", order=60)
        positives = int((ctx.test_pred == 1).sum())
        section.add_proportion("positive_rate", positives, len(ctx.test_pred))
        section.warnings.append(f"audited {type(ctx.model).__name__}")
        return section


@pytest.fixture(scope="module")
def trained(loans_data):
    config = RunConfig(
        target="defaulted", sensitive=["sex"], compress=["quantize", "prune"], epochs=3, quiet=True
    )
    config.resolve(train_rows=len(loans_data.train), plugin_defaults={})
    setup = small_setup(config, loans_data)
    from audit.engine import train

    train(setup, progress=False)
    model = setup.base_model.eval()
    ctx = build_context(
        config=config,
        dataset=loans_data,
        model=model,
        device=torch.device("cpu"),
        training=None,
        artifacts={},
        checkpoint_metadata={},
    )
    pm = pluggy.PluginManager("audit")
    pm.add_hookspecs(hookspecs)
    pm.register(GroupRatePlugin(), name="thirdparty")
    return ctx, pm


def test_section_audits_every_plugin_and_the_core_on_each_compressed_model(trained):
    ctx, pm = trained
    from audit.performance import performance_section

    report = Report(run={})
    report.add_section(performance_section(ctx))
    for section in pm.hook.audit_evaluate(ctx=ctx):
        report.add_section(section)
    section = compression_section(ctx, pm, report)
    report.add_section(section)  # every metric is prefixed with the section's name
    assert section.order == SECTION_ORDER and EFFICIENCY_ORDER < SECTION_ORDER < 30
    m = section.metrics
    for kind in ("quantize", "prune"):
        assert 0 < m[f"compression.{kind}.performance.accuracy"] <= 1
        assert f"compression.{kind}.performance.accuracy.ci_low" in m
        assert f"compression.{kind}.thirdparty.positive_rate" in m
        assert f"compression.{kind}.change.thirdparty.positive_rate.ci_high" in m
        assert f"compression.{kind}.change.sex.group.M.accuracy.ci_low" in m
        assert not any(n.startswith(f"compression.{kind}.performance.reference_") for n in m)
        change = m[f"compression.{kind}.change.performance.accuracy"]
        assert change == pytest.approx(
            m[f"compression.{kind}.performance.accuracy"] - report.metrics["performance.accuracy"]
        )
        assert m[f"compression.{kind}.change.performance.accuracy.ci_low"] <= change
    assert [t.title.split(":")[0] for t in section.tables] == ["Performance", "Third party"]
    assert section.tables[0].columns[2:5] == ["int8", "int8 change", "int8 interval"]
    json.dumps(section.data)  # the payload is JSON-able: the tables are renderings of it
    accuracy = next(r for r in section.data["models"][0]["changes"] if r["metric"] == "performance.accuracy")
    assert accuracy["interval"] == PAIRED
    assert section.summary[0].startswith("Int8: test accuracy")
    # a compressed audit's warning is the section's, named by its model, unless the original's audit raised it too
    assert "int8: audited StraightThrough" in section.warnings
    assert not any(
        "Sequential" in w for w in section.warnings
    )  # pruned: the original's warning, not repeated


def test_int8_predictions_in_the_section_are_the_int8_models(trained):
    ctx, pm = trained
    report = Report(run={})
    from audit.performance import performance_section

    report.add_section(performance_section(ctx))
    section = compression_section(ctx, pm, report)
    int8 = quantize_dynamic_int8(ctx.model)
    with torch.no_grad():
        pred = int8(ctx.dataset.test.x).argmax(1)
    expected = float((pred == ctx.test_y).float().mean())
    assert section.metrics["compression.quantize.performance.accuracy"] == pytest.approx(expected)


def _policy(path, rule: str):
    path.write_text(f"rules:\n  - {rule}\n")
    return path


def test_cli_loans_compressed_audit_and_gate(cli, tmp_path):
    data = tmp_path / "loans.csv"
    make_loans(800).to_csv(data, index=False)
    out = tmp_path / "run"
    args = ["train", "--data", data, "--target", "defaulted", "--sensitive", "sex", "--epochs", "2"]
    args += ["--robustness", "--robustness-samples", "30", "--pgd-steps", "2", "--mia-reference-models", "1"]
    args += ["--fairness", "reweight", "--fairness-baseline"]
    result = cli(*args, "--compress", "quantize,prune", "--out", out, "-q")
    assert result.code == 0, result.err
    report = read_report(out)
    metrics = report["metrics"]
    for kind in ("quantize", "prune"):
        assert f"compression.{kind}.fairness.sex.demographic_parity_difference" in metrics
        assert f"compression.{kind}.robustness.clean_accuracy" in metrics
        assert f"compression.{kind}.privacy.mia_auc" in metrics
        assert f"compression.{kind}.change.performance.accuracy.ci_low" in metrics
        # the efficiency table's accuracy and the audit's are the same model's on the same batches
        assert metrics[f"efficiency.{kind}.accuracy"] == pytest.approx(
            metrics[f"compression.{kind}.performance.accuracy"]
        )
    # a retrained baseline compares training recipes: measured for the run, not again per compressed model
    assert "fairness.mitigation.baseline_accuracy" in metrics
    assert not any(n.startswith("compression.quantize.fairness.mitigation.") for n in metrics)
    names = [s["name"] for s in report["sections"]]
    assert names.index("compression") == names.index("efficiency") + 1
    if "compression" in DEFAULT_PLUGINS:
        assert undeclared_metrics(metrics) == []
    passing = _policy(tmp_path / "pass.yaml", "compression.quantize.change.performance.accuracy >= -1")
    assert cli("gate", out / "report.json", "--policy", passing).code == 0
    failing = _policy(tmp_path / "fail.yaml", "compression.prune.robustness.clean_accuracy > 1")
    assert cli("gate", out / "report.json", "--policy", failing).code == 1


@pytest.mark.slow
def test_cli_adult_compressed_audit_and_gate(cli, tmp_path):
    out = tmp_path / "adult"
    args = ["train", "--data", "adult", "--sensitive", "sex", "--robustness", "--robustness-samples", "40"]
    args += ["--pgd-steps", "2", "--epochs", "1", "--mia-samples", "300", "--mia-reference-models", "2"]
    assert cli(*args, "--compress", "quantize,prune", "--out", out, "-q").code == 0
    metrics = read_report(out)["metrics"]
    for name in (
        "compression.quantize.fairness.sex.demographic_parity_difference",
        "compression.prune.performance.accuracy",
        "compression.quantize.robustness.fgsm.eps_0p1.robust_accuracy",
        "compression.quantize.privacy.mia_auc",
    ):
        assert isinstance(metrics[name], float), name
    rule = {"metric": "compression.quantize.change.performance.accuracy", "op": ">=", "value": -0.05}
    policy = tmp_path / "p.yaml"
    policy.write_text(json.dumps({"rules": [{**rule, "bound": "lower"}]}))
    assert cli("gate", out / "report.json", "--policy", policy).code == 0
    policy.write_text(json.dumps({"rules": [{**rule, "value": 0.5}]}))
    assert cli("gate", out / "report.json", "--policy", policy).code == 1


def test_a_policy_on_a_compressed_metric_is_checked_before_the_run():
    from audit.errors import AuditError
    from audit.gate import check_rule_metrics, parse_rule

    pm = get_plugin_manager()
    if "compression" not in DEFAULT_PLUGINS:  # the lead registers it in audit/plugins.py; until then, by hand
        pm.register(importlib.import_module("audit.default_plugins.compression"), name="compression")
    specs = collect_metric_specs(pm)
    known = parse_rule("compression.quantize.change.performance.accuracy >= -0.01", "p", 0)
    check_rule_metrics([known], policy_path="p", metrics={}, specs=specs)  # declared: accepted with no report
    typo = parse_rule("compression.quantize.performance.acuracy >= 0.8", "p", 0)
    with pytest.raises(AuditError, match="is unknown"):
        check_rule_metrics([typo], policy_path="p", metrics={}, specs=specs)

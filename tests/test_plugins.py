"""Plugin discovery: a third-party plugin registered through an entry point shows up in the report."""

import json
import os
import textwrap

from audit.plugins import get_plugin_manager
from tests.conftest import install_plugin, run_audit

PLUGIN = textwrap.dedent("""
    from audit import hookimpl
    from audit.report import MetricSpec, Section, Table

    @hookimpl
    def audit_metric_specs():
        return [
            MetricSpec("carbon.test_rows_seen", False, "rows", "Rows the estimate saw", ("ISO/IEC 42001 A.6.2.4",),
                       headline=True),
            MetricSpec("carbon.grams", None, "g", "Estimated emissions"),
        ]

    @hookimpl
    def audit_evaluate(ctx):
        section = Section("carbon", "Carbon estimate", order=35, data={"grams": 1.5, "rows": len(ctx.test_y)})
        section.add_metric("test_rows_seen", section.data["rows"])
        section.add_metric("grams", section.data["grams"])
        section.tables.append(Table("Estimate", ["grams"], [[section.data["grams"]]]))
        section.summary.append(f"About {section.data['grams']} g of CO2 for this run.")
        return section

    @hookimpl
    def audit_after_epoch(state):
        return {"carbon_epoch_seen": float(state.epoch)}
""")


def _install_third_party(tmp_path):
    return install_plugin(tmp_path, "carbon", PLUGIN)


def _run(tmp_path, extra_env, quiet=True):
    # the plugin's folder on the path, as _install_third_party left it
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **extra_env,
    }
    quiet_flag = ["--quiet"] if quiet else []
    return run_audit(
        "train", "--data", "digits", "--epochs", "1", *quiet_flag, "--out", tmp_path / "run", env=env
    )


def test_third_party_plugin_section_appears(tmp_path):
    _install_third_party(tmp_path)
    result = _run(tmp_path, {})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["metrics"]["carbon.test_rows_seen"] == report["metrics"]["performance.test_rows"]
    assert any(s["name"] == "carbon" for s in report["sections"])
    history = [t for s in report["sections"] for t in s["tables"] if t["title"] == "Training history"][0]
    assert "carbon_epoch_seen" in history["columns"]
    compliance = next(s for s in report["sections"] if s["name"] == "compliance")
    clauses = {c["id"]: c for c in compliance["data"]["clauses"]}
    assert (
        clauses["ISO/IEC 42001 A.6.2.4"]["metrics"] == 1
    )  # a third-party tag becomes a clause with its evidence


def test_third_party_plugin_gets_its_order_headline_and_model_card_part(tmp_path):
    # no core change: the order, the headline metrics and the card's part all come from what the plugin declares
    _install_third_party(tmp_path)
    result = _run(tmp_path, {}, quiet=False)
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    names = [s["name"] for s in report["sections"]]
    assert (
        names.index("privacy") < names.index("carbon") < names.index("compliance")
    )  # order 35: after privacy (30)
    carbon = report["sections"][names.index("carbon")]
    assert carbon["headline"] == ["carbon.test_rows_seen"] and carbon["data"] == {"grams": 1.5, "rows": 360}
    assert "carbon.test_rows_seen" in result.stdout  # the terminal summary lists declared headlines
    card = (tmp_path / "run" / "model_card.md").read_text()
    part = card[card.index("## Carbon estimate") :]
    assert "- About 1.5 g of CO2 for this run." in part and "| `carbon.test_rows_seen` | 360 |" in part


def test_env_var_limits_what_loads(tmp_path, monkeypatch):
    _install_third_party(tmp_path)
    result = _run(tmp_path, {"AUDIT_PLUGINS": "fairness"})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert not any(s["name"] == "carbon" for s in report["sections"])
    monkeypatch.setenv("AUDIT_PLUGINS", "privacy,robustness")
    # the core's default plugins are always registered, like a third-party one but not subject to the filter
    assert sorted(name for name, _ in get_plugin_manager().list_name_plugin()) == [
        "compression",
        "core",
        "privacy",
        "robustness",
    ]


def test_builtins_come_from_entry_points():
    from importlib import metadata

    names = {ep.name: ep.value for ep in metadata.entry_points(group="audit.plugins")}
    assert names["privacy"] == "audit_plugins.privacy"
    assert names["fairness"] == "audit_plugins.fairness"
    assert names["robustness"] == "audit_plugins.robustness"

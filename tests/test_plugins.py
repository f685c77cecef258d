"""Plugin discovery: a third-party plugin registered through an entry point shows up in the report."""

import json
import os
import subprocess
import sys
import textwrap

from audit.plugins import get_plugin_manager

PLUGIN = textwrap.dedent("""
    from audit import hookimpl
    from audit.report import MetricSpec, Section

    @hookimpl
    def audit_metric_specs():
        return [MetricSpec("carbon.test_rows_seen", False, "rows", "Rows the estimate saw", ("ISO/IEC 42001 A.6.2.4",))]

    @hookimpl
    def audit_evaluate(ctx):
        section = Section("carbon", "Carbon estimate")
        section.add_metric("test_rows_seen", len(ctx.test_y))
        return section

    @hookimpl
    def audit_after_epoch(state):
        return {"carbon_epoch_seen": float(state.epoch)}
""")


def _install_third_party(tmp_path):
    (tmp_path / "carbon_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "carbon_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: carbon-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[audit.plugins]\ncarbon = carbon_plugin\n")


def _run(tmp_path, extra_env):
    env = {
        **os.environ,
        "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        **extra_env,
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "audit.cli",
            "train",
            "--data",
            "digits",
            "--epochs",
            "1",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        env=env,
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
    clauses = {row[0]: row for row in compliance["tables"][0]["rows"]}
    assert clauses["ISO/IEC 42001 A.6.2.4"][2] == 1  # a third-party tag becomes a clause with its evidence


def test_env_var_limits_what_loads(tmp_path, monkeypatch):
    _install_third_party(tmp_path)
    result = _run(tmp_path, {"AUDIT_PLUGINS": "fairness"})
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert not any(s["name"] == "carbon" for s in report["sections"])
    monkeypatch.setenv("AUDIT_PLUGINS", "privacy,robustness")
    assert sorted(name for name, _ in get_plugin_manager().list_name_plugin()) == ["privacy", "robustness"]


def test_builtins_come_from_entry_points():
    from importlib import metadata

    names = {ep.name: ep.value for ep in metadata.entry_points(group="audit.plugins")}
    assert names["privacy"] == "audit_plugins.privacy"
    assert names["fairness"] == "audit_plugins.fairness"
    assert names["robustness"] == "audit_plugins.robustness"

"""audit.provenance: versions, hashes, the report's run block; and where each value came from, through the CLI."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import shlex

import numpy as np
import pandas as pd
import pytest
import torch

from audit.config import RunConfig
from audit.data import load_dataset
from audit.outputs import default_out_dir
from audit.provenance import package_versions, run_info, sha256_hex
from tests.conftest import make_loans, read_report


def test_package_versions_name_what_shapes_the_numbers():
    versions = package_versions()
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__
    assert versions["numpy"] == np.__version__ and versions["pandas"] == pd.__version__
    for name in ("rai-audit", "opacus", "fairlearn", "torchattacks", "scikit-learn"):
        assert versions[name] not in ("", "not installed"), name


def test_sha256_hex():
    assert sha256_hex(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_hex(b"") == hashlib.sha256(b"").hexdigest()


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    path = tmp_path_factory.mktemp("prov") / "loans.csv"
    make_loans(300).to_csv(path, index=False)
    config = RunConfig(
        data=str(path),
        target="defaulted",
        sensitive=["sex"],
        seed=4,
        command_line=["audit", "train", "--data", str(path), "--seed", "4"],
        sources={"data": "command line", "seed": "command line", "sensitive": "config file c.yaml"},
    )
    dataset = load_dataset(config)
    config.resolve(train_rows=len(dataset.train), plugin_defaults={})
    return config, dataset


def test_run_info_records_config_sources_and_data_facts(loans):
    config, dataset = loans
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)
    info = run_info(config, dataset, torch.device("cpu"), started)
    assert info["name"] == default_out_dir(config).name == "loans"
    assert (info["command"], info["seed"], info["device"]) == ("train", 4, "cpu")
    assert info["command_line"] == shlex.join(config.command_line)
    assert info["started_at"] == "2026-01-02T03:04:05+00:00"
    assert info["config"] == config.to_dict() and "sources" not in info["config"]
    expected_sha = sha256_hex(json.dumps(config.to_dict(), sort_keys=True, default=str).encode())
    assert info["config_sha256"] == expected_sha
    sources = info["config_sources"]
    assert list(sources) == sorted(sources)
    rows, batch = len(dataset.train), config.batch_size
    steps = -(-rows // batch)  # steps an epoch
    assert sources == {
        "batch_size": f"default for {rows} training rows",
        "data": "command line",
        "epochs": f"default for {rows} training rows at batch {batch} ({steps} steps an epoch): "
        "at least 250 steps and 10 epochs, at most 200 epochs",
        "lr": f"default for batch size {batch}",
        "patience": f"default for {steps} steps an epoch: at least 80 steps without improvement",
        "seed": "command line",
        "sensitive": "config file c.yaml",
    }
    data = info["data"]
    assert data["source"] == config.data and data["name"] == "loans" and data["kind"] == "tabular"
    assert data["sha256"] == dataset.fingerprint and len(data["sha256"]) == 64
    assert data["rows"] == {"train": len(dataset.train), "val": len(dataset.val), "test": len(dataset.test)}
    assert sum(data["rows"].values()) == 300
    assert (data["target"], data["classes"], data["sensitive"]) == ("defaulted", ["no", "yes"], ["sex"])
    assert data["features"] == len(dataset.feature_names)
    assert data["missing_values"] == dataset.missing_counts
    assert info["versions"] == package_versions()
    assert json.loads(json.dumps(info)) == info


def test_the_config_hash_changes_with_the_config(loans):
    config, dataset = loans
    started = dt.datetime.now(dt.timezone.utc)
    other = RunConfig(**{**config.to_dict(), "seed": 5})
    a = run_info(config, dataset, torch.device("cpu"), started)["config_sha256"]
    assert run_info(other, dataset, torch.device("cpu"), started)["config_sha256"] != a


# --- through the CLI: where each value came from ------------------------------------------------


def test_cli_flag_beats_config_file_and_plugin_and_each_is_recorded(cli, loans_csv, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nhidden: [8]\nlr: 0.5\n")
    out = tmp_path / "out"
    result = cli(
        "train", "--data", loans_csv, "--target", "defaulted", "--config", cfg,
        "--lr", "0.01", "--dp", "--noise-multiplier", "1", "-q", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    run = read_report(out)["run"]
    sources = run["config_sources"]
    assert run["config"]["lr"] == 0.01 and sources["lr"] == "command line"
    assert run["config"]["epochs"] == 1 and sources["epochs"] == f"config file {cfg}"
    assert run["config"]["hidden"] == [8] and sources["hidden"] == f"config file {cfg}"
    assert sources["options.dp"] == "command line" and sources["options.noise_multiplier"] == "command line"
    assert sources["batch_size"] == f"default for {run['data']['rows']['train']} training rows"
    assert "optimizer" not in sources  # a built-in default is not listed
    assert run["model_sha256"] == sha256_hex((out / "model.pt").read_bytes())


def test_cli_without_lr_takes_dp_sgds_default_from_the_privacy_plugin(cli, loans_csv, tmp_path):
    out = tmp_path / "out"
    result = cli(
        "train", "--data", loans_csv, "--target", "defaulted", "--epochs", "1", "--hidden", "8",
        "--dp", "--epsilon", "3", "-q", "--out", out,
    )  # fmt: skip
    assert result.code == 0, result.err
    run = read_report(out)["run"]
    assert run["config_sources"]["lr"] == "plugin privacy"
    # the core's default below batch 1024 would be 1e-3
    assert run["config"]["lr"] == 3e-3 and run["config"]["batch_size"] < 1024

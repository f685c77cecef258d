"""audit.outputs: where a run's files go, atomic writes, and the one set of files a run writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from audit.config import RunConfig
from audit.outputs import default_out_dir, write_atomic, write_outputs
from audit.report import Report, Section, content_digest


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (RunConfig(data="adult"), Path("runs/adult")),
        (RunConfig(data="digits", command="evaluate"), Path("runs/digits-eval")),
        (RunConfig(data="/data/2024/loans.csv"), Path("runs/loans")),
        (RunConfig(data="shop/orders.parquet", command="evaluate"), Path("runs/orders-eval")),
    ],
)
def test_default_out_dir_is_runs_and_the_data_stem(config, expected):
    assert default_out_dir(config) == expected


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_out_wins(command, tmp_path):
    config = RunConfig(data="adult", command=command, out=str(tmp_path / "mine"))
    assert default_out_dir(config) == tmp_path / "mine"


def test_write_atomic_writes_text_and_bytes_and_creates_folders(tmp_path):
    text, blob = tmp_path / "a" / "b" / "report.json", tmp_path / "model.pt"
    write_atomic(text, '{"x": 1}')
    write_atomic(blob, b"\x00\x01binary")
    assert text.read_text() == '{"x": 1}'
    assert blob.read_bytes() == b"\x00\x01binary"
    assert sorted(p.name for p in text.parent.iterdir()) == ["report.json"]  # no temporary file left


def test_write_atomic_replaces_the_content(tmp_path):
    path = tmp_path / "report.md"
    write_atomic(path, "a much longer first version\n" * 10)
    write_atomic(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    write_atomic(path, "old")
    with pytest.raises(TypeError):
        write_atomic(path, 12345)  # neither str nor bytes: the write itself fails
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def _report() -> Report:
    report = Report(run={"name": "loans", "command": "train", "seed": 0})
    section = Section("performance", "Performance", order=10, summary=["accuracy 0.81"])
    section.add_proportion("accuracy", 81, 100)
    report.add_section(section)
    return report


def test_write_outputs_writes_the_set_and_returns_the_json(tmp_path):
    out = tmp_path / "run"
    data = write_outputs(out, _report(), b"model-bytes")
    assert sorted(p.name for p in out.iterdir()) == [
        "model.pt",
        "model_card.md",
        "report.html",
        "report.json",
        "report.md",
    ]
    assert json.loads((out / "report.json").read_text()) == data
    assert data["metrics"]["performance.accuracy"] == 0.81
    assert data["content_sha256"] == content_digest(data)
    assert (out / "model.pt").read_bytes() == b"model-bytes"
    assert "performance.accuracy" in (out / "report.md").read_text()
    assert "<html" in (out / "report.html").read_text().lower()
    card = (out / "model_card.md").read_text()
    assert card.startswith("# Model card: loans") and data["content_sha256"] in card  # from this report


def test_write_outputs_without_model_bytes_writes_no_model(tmp_path):
    write_outputs(tmp_path, _report(), None)
    assert not (tmp_path / "model.pt").exists()
    assert (tmp_path / "report.json").is_file() and (tmp_path / "model_card.md").is_file()

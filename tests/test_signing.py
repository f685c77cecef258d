"""Signed reports through the real CLI: keygen, the manifest of a run's files, verify, gate, evaluate's model check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from audit.report import content_digest
from audit.signing import PRIVATE_KEY_NAME, PUBLIC_KEY_NAME, check_model_file
from tests.conftest import assert_bad_input, read_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two keys (A signs, B does not) and two digits runs: one unsigned, one signed with key A."""
    from audit.cli import main

    root = tmp_path_factory.mktemp("signing")
    for name in ("a", "b"):
        assert main(["keygen", "--out", str(root / name)]) == 0
    common = ["train", "--data", "digits", "--epochs", "1", "-q"]
    key = str(root / "a" / PRIVATE_KEY_NAME)
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("AUDIT_SIGN_KEY", raising=False)  # "plain" stays unsigned wherever the suite runs
        assert main([*common, "--out", str(root / "plain")]) == 0
        assert main([*common, "--out", str(root / "signed"), "--sign-key", key]) == 0
    return root


def _copy(runs: Path, name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(runs / name, target)
    return target


def _edit_and_reseal(report_path: Path) -> None:
    """What a forger does: change a number and recompute the unkeyed checksum."""
    data = json.loads(report_path.read_text())
    data["metrics"]["performance.accuracy"] = 0.999
    data["content_sha256"] = content_digest(data)
    report_path.write_text(json.dumps(data, indent=2))


def _policy(tmp_path: Path) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - performance.accuracy >= 0.0\n")
    return policy


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(cli, tmp_path):
    assert cli("keygen", "--out", tmp_path / "k").code == 0
    private, public = tmp_path / "k" / PRIVATE_KEY_NAME, tmp_path / "k" / PUBLIC_KEY_NAME
    assert private.stat().st_mode & 0o777 == 0o600 and "PRIVATE KEY" in private.read_text()
    assert "PUBLIC KEY" in public.read_text()
    before = private.read_bytes(), public.read_bytes()
    assert_bad_input(cli("keygen", "--out", tmp_path / "k"), says="already exists")
    assert (private.read_bytes(), public.read_bytes()) == before


def test_a_run_lists_every_file_it_wrote_and_signs_the_report(cli, runs):
    for name in ("plain", "signed"):
        report = read_report(runs / name)
        assert sorted(report["manifest"]) == ["model.pt", "model_card.md", "report.html", "report.md"]
        # the renderings show content_sha256, which covers the body but not the manifest or signature
        assert report["content_sha256"] in (runs / name / "report.html").read_text()
    signature = read_report(runs / "signed")["signature"]
    assert signature["algorithm"] == "ed25519" and len(signature["key_id"]) == 16
    assert "signature" not in read_report(runs / "plain")
    plain = cli("verify", runs / "plain" / "report.json")
    assert plain.code == 0 and "OK (checksum only)" in plain.out and "not forgery" in plain.out
    signed = cli("verify", runs / "signed" / "report.json")
    assert signed.code == 0 and f"signature valid for key {signature['key_id']}" in signed.out
    assert "pass --public-key" in signed.out


def test_an_edit_with_a_recomputed_checksum_fails_only_a_signed_report(cli, runs, tmp_path):
    plain, signed = _copy(runs, "plain", tmp_path), _copy(runs, "signed", tmp_path)
    for folder in (plain, signed):
        _edit_and_reseal(folder / "report.json")
    forged = cli("verify", plain / "report.json")
    assert forged.code == 0 and "OK (checksum only)" in forged.out  # the checksum cannot tell: it says so
    caught = cli("verify", signed / "report.json")
    assert caught.code == 1 and "MODIFIED" in caught.out and "edited after signing" in caught.out
    refused = cli("gate", signed / "report.json", "--policy", _policy(tmp_path))
    assert_bad_input(refused, says="fails verification, not gated")


def test_a_flipped_byte_in_the_model_is_caught_and_the_gate_refuses(cli, runs, tmp_path):
    folder = _copy(runs, "plain", tmp_path)
    model = bytearray((folder / "model.pt").read_bytes())
    model[len(model) // 2] ^= 0x01
    (folder / "model.pt").write_bytes(bytes(model))
    result = cli("verify", folder / "report.json")
    assert result.code == 1 and "MODIFIED" in result.out and "model.pt changed" in result.out
    refused = cli("gate", folder / "report.json", "--policy", _policy(tmp_path), "--write-report")
    assert_bad_input(refused, says="model.pt changed")
    (folder / "report.md").unlink()
    missing = cli("verify", folder / "report.json")
    assert missing.code == 1 and "report.md is missing" in missing.out


def test_the_public_key_names_who_signed(cli, runs, tmp_path):
    report = runs / "signed" / "report.json"
    right = cli("verify", report, "--public-key", runs / "a" / PUBLIC_KEY_NAME)
    assert right.code == 0 and "signed by key" in right.out
    wrong = cli("verify", report, "--public-key", runs / "b" / PUBLIC_KEY_NAME)
    assert wrong.code == 1 and "not by the given public key" in wrong.out
    gated = cli("gate", report, "--policy", _policy(tmp_path), "--public-key", runs / "a" / PUBLIC_KEY_NAME)
    assert gated.code == 0, gated.err
    assert_bad_input(
        cli("gate", report, "--policy", _policy(tmp_path), "--public-key", runs / "b" / PUBLIC_KEY_NAME),
        says="not by the given public key",
    )
    unsigned = cli(
        "gate",
        runs / "plain" / "report.json",
        "--policy",
        _policy(tmp_path),
        "--public-key",
        runs / "a" / PUBLIC_KEY_NAME,
    )
    assert_bad_input(unsigned, says="not signed")
    not_a_key = cli("verify", report, "--public-key", runs / "a" / PRIVATE_KEY_NAME)
    assert_bad_input(not_a_key, says="is not a PEM public key")
    assert_bad_input(cli("verify", report, "--public-key", tmp_path / "none.pem"), says="does not exist")


def test_gate_write_report_signs_again_and_keeps_the_model_in_the_manifest(cli, runs, tmp_path, monkeypatch):
    folder = _copy(runs, "signed", tmp_path)
    policy = _policy(tmp_path)
    unsigned = cli("gate", folder / "report.json", "--policy", policy, "--write-report")
    assert_bad_input(unsigned, says="--write-report needs --sign-key")
    assert "gate" not in [s["name"] for s in read_report(folder)["sections"]]
    monkeypatch.setenv("AUDIT_SIGN_KEY", str(tmp_path / "nowhere.pem"))
    assert_bad_input(
        cli("gate", folder / "report.json", "--policy", policy, "--write-report"),
        says="(from $AUDIT_SIGN_KEY)",
    )
    monkeypatch.delenv("AUDIT_SIGN_KEY")
    key = runs / "a" / PRIVATE_KEY_NAME
    assert (
        cli("gate", folder / "report.json", "--policy", policy, "--write-report", "--sign-key", key).code == 0
    )
    report = read_report(folder)
    assert report["metrics"]["gate.passed"] == 1 and "model.pt" in report["manifest"]
    result = cli("verify", folder / "report.json", "--public-key", runs / "a" / PUBLIC_KEY_NAME)
    assert result.code == 0 and "model.pt" in result.out, result.out


def test_an_older_report_and_a_lone_copy_still_gate_and_re_rendering_keeps_it_valid(cli, runs, tmp_path):
    folder = _copy(runs, "plain", tmp_path)
    data = read_report(folder)
    del data["manifest"]  # written before reports listed their files: the checksum is unchanged
    (folder / "report.json").write_text(json.dumps(data))
    older = cli("verify", folder / "report.json")
    assert older.code == 0 and "older report" in older.out
    assert cli("gate", folder / "report.json", "--policy", _policy(tmp_path)).code == 0
    alone = tmp_path / "alone.json"
    shutil.copy(runs / "plain" / "report.json", alone)  # copied without its files: gate checks it alone
    assert cli("gate", alone, "--policy", _policy(tmp_path)).code == 0
    assert cli("verify", alone).code == 1  # verify wants the files it lists
    fresh = _copy(runs, "signed", tmp_path)
    assert cli("report", fresh / "report.json").code == 0  # renderings are a function of report.json
    assert cli("verify", fresh / "report.json").code == 0


def test_evaluate_checks_the_model_file_against_the_report_beside_it(cli, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_SIGN_KEY", str(runs / "a" / PRIVATE_KEY_NAME))
    out = tmp_path / "eval"
    assert cli("evaluate", "--model", runs / "plain" / "model.pt", "--out", out, "-q").code == 0
    report = read_report(out)
    assert report["run"]["model_check"] == "matches report.json beside it"
    assert cli("verify", out / "report.json", "--public-key", runs / "a" / PUBLIC_KEY_NAME).code == 0
    folder = _copy(runs, "plain", tmp_path)
    checkpoint = torch.load(folder / "model.pt", weights_only=True)
    name = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][name] = checkpoint["state_dict"][name] + 0.5  # other weights, a valid file
    torch.save(checkpoint, folder / "model.pt")
    swapped = cli("evaluate", "--model", folder / "model.pt", "--out", tmp_path / "e2", "-q")
    assert_bad_input(swapped, tmp_path / "e2", says="is not the model")
    lone = tmp_path / "lone" / "model.pt"
    lone.parent.mkdir()
    shutil.copy(runs / "plain" / "model.pt", lone)
    assert check_model_file(lone) == "no report.json beside the model file: not checked"

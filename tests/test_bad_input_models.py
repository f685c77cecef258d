"""A model file is data, a user's factory fails in one line before training, a crash exits 3 (never 1)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from audit.checkpoint import MODEL_FORMAT
from tests.conftest import assert_bad_input, install_plugin, run_audit


@pytest.fixture
def trained(cli, tmp_path, loans_csv):
    out = tmp_path / "run"
    assert (
        cli("train", "--data", loans_csv, "--target", "defaulted", "--epochs", "1", "--out", out, "-q").code
        == 0
    )
    return out


def test_a_model_file_naming_code_never_runs_it(cli, tmp_path, trained, loans_csv):
    # the recipe names os:system with a shell command: loading must refuse, and the command must not have run
    marker = tmp_path / "pwned"
    checkpoint = torch.load(trained / "model.pt", weights_only=True)
    checkpoint["spec"] = {"name": "os:system", "kwargs": {"command": f"touch {marker}"}}
    crafted = tmp_path / "crafted.pt"
    torch.save(checkpoint, crafted)
    result = cli("evaluate", "--model", crafted, "--data", loans_csv, "--out", tmp_path / "eval", "-q")
    assert_bad_input(result, tmp_path / "eval", says="never chooses code")
    assert not marker.exists()
    # naming the factory on the command line is the user's decision, and the recipe must agree with it
    other = cli(
        "evaluate",
        "--model",
        crafted,
        "--data",
        loans_csv,
        "--model-factory",
        "json:loads",
        "--out",
        tmp_path / "e2",
    )
    assert_bad_input(other, tmp_path / "e2", says="'os:system'")
    assert not marker.exists()


def test_a_damaged_builtin_recipe_is_refused(cli, tmp_path, trained, loans_csv):
    checkpoint = torch.load(trained / "model.pt", weights_only=True)
    checkpoint["spec"]["kwargs"]["activation"] = "os.system"
    crafted = tmp_path / "crafted.pt"
    torch.save(checkpoint, crafted)
    assert_bad_input(
        cli("evaluate", "--model", crafted, "--data", loans_csv, "--out", tmp_path / "e", "-q"),
        tmp_path / "e",
        says="recipe is damaged",
    )


@pytest.mark.parametrize("drop", ["schema", "spec", "state_dict"])
def test_a_model_file_lacking_a_part_is_refused(cli, tmp_path, trained, loans_csv, drop):
    checkpoint = torch.load(trained / "model.pt", weights_only=True)
    del checkpoint[drop]
    crafted = tmp_path / "crafted.pt"
    torch.save(checkpoint, crafted)
    assert_bad_input(
        cli("evaluate", "--model", crafted, "--data", loans_csv, "--out", tmp_path / "e", "-q"),
        tmp_path / "e",
        says=f"lacks its {drop}",
    )


def test_an_image_model_on_a_table_is_refused(cli, tmp_path, loans_csv):
    out = tmp_path / "digits"
    assert cli("train", "--data", "digits", "--epochs", "1", "--out", out, "-q").code == 0
    result = cli("evaluate", "--model", out / "model.pt", "--data", loans_csv, "--out", tmp_path / "e", "-q")
    assert_bad_input(result, tmp_path / "e", says="trained on images")


FACTORIES = {
    "raises": "def build(input_shape, num_classes):\n    raise RuntimeError('no GPU here')\n",
    "syntax": "def build(input_shape, num_classes:\n    pass\n",
    "notcallable": "build = 42\n",
    "otherargs": "def build(width, depth):\n    return None\n",
    "wrongsize": "from torch import nn\ndef build(input_shape, num_classes):\n    return nn.Linear(input_shape[0], 7)",
    "onelogit": "from torch import nn\ndef build(input_shape, num_classes):\n    return nn.Linear(input_shape[0], 1)\n",
    "notmodule": "def build(input_shape, num_classes):\n    return 'a model'\n",
    "badforward": "from torch import nn\ndef build(input_shape, num_classes):\n    return nn.Linear(3, num_classes)\n",
}
SAYS = {
    "raises": "raised RuntimeError: no GPU here",
    "syntax": "importing",
    "notcallable": "not a callable factory",
    "otherargs": "requires width, depth",
    "wrongsize": "expected (2, 2)",
    "onelogit": "expected (2, 2)",
    "notmodule": "expected a torch.nn.Module",
    "badforward": "failed on inputs of shape",
}


@pytest.mark.parametrize("kind", list(FACTORIES))
def test_a_broken_factory_is_one_line_before_training(cli, tmp_path, loans_csv, monkeypatch, kind):
    module = f"factory_{kind}"
    (tmp_path / f"{module}.py").write_text(FACTORIES[kind])
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    result = cli(
        "train",
        "--data",
        loans_csv,
        "--target",
        "defaulted",
        "--model",
        f"{module}:build",
        "--out",
        out,
        "-q",
    )
    assert_bad_input(result, out, says=SAYS[kind])


@pytest.mark.parametrize(
    "args, says",
    [
        (["--lr", "inf"], "--lr must be a finite positive number"),
        (["--lr", "nan"], "--lr must be a finite positive number"),
        (["--seed", "-5"], "--seed must be in [0, 4294967295]"),
        (["--seed", str(2**32)], "--seed must be in [0, 4294967295]"),
        (["--patience", "-1"], "--patience must be at least 1"),
        (["--patience", "0"], "--patience must be at least 1"),
        (["--weight-decay", "nan"], "--weight-decay must be a finite number"),
        (["--grad-clip", "inf"], "--grad-clip must be a finite positive number"),
        (["--gamma", "inf", "--schedule", "step"], "--gamma positive"),
    ],
)
def test_option_values_no_run_can_use(cli, tmp_path, args, says):
    out = tmp_path / "run"
    assert_bad_input(cli("train", "--data", "digits", *args, "--out", out, "-q"), out, says=says)


def test_unknown_plugin_name_in_the_environment_is_refused(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("AUDIT_PLUGINS", "bogus,fairness")
    out = tmp_path / "run"
    assert_bad_input(
        cli("train", "--data", "digits", "--out", out, "-q"), out, says="unknown plugin(s) bogus"
    )


@pytest.mark.parametrize(
    "text, says",
    [
        ("dp: yes please\n", "key 'dp' is a switch (--dp); expected true or false"),
        ("epochs: [1, 2]\n", "key 'epochs' (--epochs): expected an integer"),
        ("optimizer: adamm\n", "--optimizer 'adamm' is unknown"),
        ("robustness: always\n", "key 'robustness' (--robustness): expected one of eval, adv-train"),
        ("no_such_option: 1\n", "key 'no_such_option' is unknown"),
    ],
)
def test_config_file_errors_name_the_key(cli, tmp_path, text, says):
    config = tmp_path / "run.yaml"
    config.write_text("data: digits\n" + text)
    out = tmp_path / "run"
    assert_bad_input(cli("train", "--config", config, "--out", out, "-q"), out, says=says)


def test_a_switch_key_by_its_flag_name_is_accepted(cli, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("data: digits\nepochs: 2\nno_early_stopping: true\n")
    out = tmp_path / "run"
    assert cli("train", "--config", config, "--out", out, "-q").code == 0
    run = json.loads((out / "report.json").read_text())["run"]
    assert run["config"]["patience"] is None and run["config_sources"]["patience"].startswith("config file")


CRASHING_PLUGIN = textwrap.dedent("""
    from audit import hookimpl

    @hookimpl
    def audit_evaluate(ctx):
        raise ZeroDivisionError("a bug in this plugin")
""")


def test_an_internal_error_exits_3_with_one_line_and_a_traceback_file(tmp_path):
    # a crash is not a verdict: CI must be able to tell it from a failed gate (1) and from bad input (2)
    env = install_plugin(tmp_path, "crashing", CRASHING_PLUGIN)
    out = tmp_path / "run"
    out.mkdir()
    command = ["train", "--data", "digits", "--epochs", "1", "-q", "--out", out]
    result = run_audit(*command, env=env)
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error: ZeroDivisionError: a bug in this plugin" in lines[0]
    logs = list(Path(out).glob("audit-error-*.txt"))
    assert (
        len(logs) == 1 and "Traceback" in logs[0].read_text() and "crashing_plugin.py" in logs[0].read_text()
    )
    assert not (out / "report.json").exists()
    debug = run_audit("--debug", *command, env=env)
    assert debug.returncode == 3 and "Traceback (most recent call last)" in debug.stderr


def test_model_format_constant_is_what_train_writes(trained):
    assert torch.load(trained / "model.pt", weights_only=True)["format"] == MODEL_FORMAT


def test_a_learning_rate_that_breaks_the_weights_is_named_not_reported(cli, tmp_path):
    # lr 1e30 with SGD: the last step's loss is finite, the update that follows makes the weights non-finite
    out = tmp_path / "run"
    result = cli(
        "train", "--data", "digits", "--epochs", "1", "--optimizer", "sgd", "--lr", "1e30", "--out", out, "-q"
    )
    assert_bad_input(result, out, says="training diverged")


# --- a model trained elsewhere: each wrong input is one line, exit 2, nothing written --------------------------


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory):
    from tests.elsewhere import train_elsewhere

    return train_elsewhere(tmp_path_factory.mktemp("elsewhere"))


def _external(cli, e, out, *args):
    from tests.elsewhere import FACTORY_MODULE

    model = ["--model", f"{FACTORY_MODULE}:factory", "--weights", e.weights]
    data = ["--data", e.test_csv, "--target", "label", "--sensitive", "sex", "--features-ready"]
    return cli("evaluate", *model, *data, *args, "--out", out, "-q")


class _Evil:
    """Unpickling this would run a shell command: a weights file must never get that far."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    "case, says",
    [
        ("renamed keys", "lacks 0.weight"),
        ("wrong shapes", "has shapes 0.weight (32, 3) where the model has (16, 3)"),
        ("a list", "holds a list, not a state_dict"),
        ("a non-tensor entry", "entry 'step' is a int"),
        ("pickled code", "could not be read (UnpicklingError)"),
        ("a rai-audit checkpoint wrapper", "not a state_dict"),
    ],
)
def test_a_weights_file_that_does_not_fit_is_refused(cli, tmp_path, monkeypatch, elsewhere, case, says):
    monkeypatch.syspath_prepend(str(elsewhere.folder))
    state = torch.load(elsewhere.weights, weights_only=True)
    marker = tmp_path / "pwned"
    wide = {k: torch.zeros(32, *v.shape[1:]) if k.startswith("0.") else v for k, v in state.items()}
    wide["2.weight"] = torch.zeros(2, 32)
    payload = {
        "renamed keys": {f"net.{k}": v for k, v in state.items()},
        "wrong shapes": wide,  # what a factory that does not match the weights meets
        "a list": list(state.values()),
        "a non-tensor entry": {**state, "step": 3},
        "pickled code": _Evil(marker),
        "a rai-audit checkpoint wrapper": {"state_dict": state, "epoch": 3},
    }[case]
    bad = tmp_path / "bad.pt"
    torch.save(payload, bad)
    result = cli(
        "evaluate", "--model", "elsewhere_models:factory", "--weights", bad, *_ready(elsewhere, tmp_path)
    )
    assert_bad_input(result, tmp_path / "out", says=says)
    assert not marker.exists()


def _ready(e, tmp_path):
    return [
        "--data",
        e.test_csv,
        "--target",
        "label",
        "--sensitive",
        "sex",
        "--features-ready",
        "--out",
        tmp_path / "out",
    ]


def test_a_factory_that_does_not_match_the_weights_is_refused(cli, tmp_path, monkeypatch, elsewhere):
    monkeypatch.syspath_prepend(str(elsewhere.folder))
    result = cli(
        "evaluate",
        "--model",
        "elsewhere_models:wide",
        "--weights",
        elsewhere.weights,
        *_ready(elsewhere, tmp_path),
    )
    assert_bad_input(
        result, tmp_path / "out", says="does not fit the model --model elsewhere_models:wide builds"
    )


@pytest.mark.parametrize(
    "args, says",
    [
        (["--features", "income,age,debt"], "names column 'debt' that"),
        (["--features", "income,income,age"], "names 'income' twice"),
        (["--features", "income,age,label"], "names the target 'label'"),
        (["--train-data", "MISSING"], "data file MISSING does not exist"),
    ],
)
def test_a_feature_column_that_is_not_there_is_refused(cli, tmp_path, monkeypatch, elsewhere, args, says):
    monkeypatch.syspath_prepend(str(elsewhere.folder))
    assert_bad_input(_external(cli, elsewhere, tmp_path / "out", *args), tmp_path / "out", says=says)


def test_a_feature_the_model_cannot_take_is_refused(cli, tmp_path, monkeypatch, elsewhere):
    monkeypatch.syspath_prepend(str(elsewhere.folder))
    frame = elsewhere.test.copy()
    frame.loc[3, "age"] = None
    holes = tmp_path / "holes.csv"
    frame.to_csv(holes, index=False)
    base = ["--model", "elsewhere_models:factory", "--weights", elsewhere.weights, "--target", "label", "-q"]
    result = cli("evaluate", *base, "--data", holes, "--features-ready", "--out", tmp_path / "o1")
    assert_bad_input(result, tmp_path / "o1", says="feature column 'sex'")  # text, and not declared sensitive
    result = cli(
        "evaluate", *base, "--data", holes, "--sensitive", "sex", "--features-ready", "--out", tmp_path / "o2"
    )
    assert_bad_input(result, tmp_path / "o2", says="'age' in")
    assert "1 missing value(s)" in result.err
    # weights for 3 inputs given 2 columns: the factory builds for 2, and the weights say they are for 3
    result = _external(cli, elsewhere, tmp_path / "o3", "--features", "income,age")
    assert_bad_input(result, tmp_path / "o3", says="0.weight (16, 3) where the model has (16, 2)")
    # a program for 3 inputs fails on two zero rows of 2, before any audit
    ready = ["--target", "label", "--sensitive", "sex", "--features-ready", "--features", "income,age", "-q"]
    result = cli(
        "evaluate",
        "--program",
        elsewhere.torchscript,
        "--data",
        elsewhere.test_csv,
        *ready,
        "--out",
        tmp_path / "o4",
    )
    assert_bad_input(result, tmp_path / "o4", says="failed on inputs of shape (2, 2)")


@pytest.mark.parametrize(
    "args, says",
    [
        (["--model", "elsewhere_models:factory"], "names a factory; pass --weights"),
        (["--weights", "W"], "audit evaluate needs --model"),
        (["--model", "elsewhere_models:factory", "--weights", "W"], "pass --features-ready"),
        (["--program", "P", "--model", "M"], "not both"),
        (["--program", "P", "--features-ready"], "--data FILE is required"),
        (["--program", "P", "--features-ready", "--data", "adult"], "built-in data adult"),
        (["--model", "M.pt", "--train-data", "T.csv"], "--train-data applies with --data FILE"),
        (["--model", "M.pt", "--data", "adult", "--train-data", "T.csv"], "built-in data"),
    ],
)
def test_which_model_to_audit_is_checked_before_any_data(cli, tmp_path, args, says):
    assert_bad_input(cli("evaluate", *args, "--out", tmp_path / "out", "-q"), tmp_path / "out", says=says)


def test_a_saved_model_takes_no_features_ready(cli, tmp_path, trained, loans_csv):
    result = cli(
        "evaluate",
        "--model",
        trained / "model.pt",
        "--data",
        loans_csv,
        "--features-ready",
        "--out",
        tmp_path / "o",
    )
    assert_bad_input(result, tmp_path / "o", says="holds its own preprocessing")


def test_a_program_file_is_only_loaded_through_program(cli, tmp_path, elsewhere):
    # a program given as --model is read as a model file (weights only) and refused: it never runs
    ready = ["--data", elsewhere.test_csv, "--target", "label", "--sensitive", "sex", "-q"]
    for program in (elsewhere.torchscript, elsewhere.exported):
        result = cli("evaluate", "--model", program, *ready, "--out", tmp_path / "o1")
        assert_bad_input(result, tmp_path / "o1", says="expected a model.pt written by 'audit train'")
    # a state_dict given as --program is no program; a static-batch export is named
    result = cli(
        "evaluate", "--program", elsewhere.weights, *ready, "--features-ready", "--out", tmp_path / "o2"
    )
    assert_bad_input(result, tmp_path / "o2", says="is neither a TorchScript archive")
    static = tmp_path / "static.pt2"
    x = torch.zeros(4, 3)
    torch.export.save(torch.export.export(elsewhere.model, (x,)), static)
    result = cli("evaluate", "--program", static, *ready, "--features-ready", "--out", tmp_path / "o3")
    assert_bad_input(result, tmp_path / "o3", says="export it with a dynamic batch dimension")
    result = cli(
        "evaluate",
        "--program",
        elsewhere.torchscript,
        *ready,
        "--features-ready",
        "--compress",
        "quantize",
        "--out",
        tmp_path / "o4",
    )
    assert_bad_input(result, tmp_path / "o4", says="cannot apply to a TorchScript or torch.export program")


@pytest.mark.parametrize(
    "line, says", [("program: p.pt2", "'program' names code"), ("model: os:system", "'model' names code")]
)
def test_a_config_file_never_names_code_for_evaluate(cli, tmp_path, line, says):
    config = tmp_path / "c.yaml"
    config.write_text(line + "\n")
    args = ["--config", config, "--features-ready", "--data", "d.csv", "--out", tmp_path / "o"]
    assert_bad_input(cli("evaluate", *args), tmp_path / "o", says=says)

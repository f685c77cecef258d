"""audit.checkpoint: the model file's round trip, refusals of foreign or damaged files, evaluate's defaults."""

from __future__ import annotations

import pytest
import torch

from audit.checkpoint import (
    MODEL_FORMAT,
    checkpoint_bytes,
    defaults_from_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
)
from audit.config import RunConfig
from audit.data import load_dataset
from audit.errors import AuditError
from audit.models import build_model, model_spec
from tests.conftest import make_loans


def _spec(dataset, name="auto"):
    return model_spec(
        name=name,
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=[8],
        channels=[4, 4],
        dropout=0.0,
    )


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    data_path = folder / "loans.csv"
    make_loans(300).to_csv(data_path, index=False)
    config = RunConfig(data=str(data_path), target="defaulted", sensitive=["sex"], seed=3, val_fraction=0.15)
    dataset = load_dataset(config)
    torch.manual_seed(0)
    spec = _spec(dataset)
    model = build_model(spec)
    metadata = {"privacy": {"epsilon": 2.5}}
    path = folder / "model.pt"
    path.write_bytes(checkpoint_bytes(spec, model, dataset, config, metadata))
    return {
        "config": config,
        "dataset": dataset,
        "spec": spec,
        "model": model,
        "metadata": metadata,
        "path": path,
    }


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    config = RunConfig(data="digits", seed=5, test_fraction=0.25)
    dataset = load_dataset(config)
    spec = _spec(dataset)
    path = tmp_path_factory.mktemp("digits") / "model.pt"
    path.write_bytes(checkpoint_bytes(spec, build_model(spec), dataset, config, {}))
    return load_checkpoint(str(path))


def one_line_error(call, *args, **kwargs) -> str:
    with pytest.raises(AuditError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_round_trip_keeps_format_spec_schema_metadata_and_config(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    assert checkpoint["format"] == MODEL_FORMAT == "rai-audit-model/1"
    assert checkpoint["spec"] == loans["spec"]
    assert checkpoint["schema"] == loans["dataset"].schema()
    assert checkpoint["schema"]["sensitive"] == ["sex"] and checkpoint["schema"]["kind"] == "tabular"
    assert checkpoint["metadata"] == loans["metadata"]
    assert checkpoint["config"] == loans["config"].to_dict()
    saved = loans["model"].state_dict()
    assert checkpoint["state_dict"].keys() == saved.keys()
    assert all(torch.equal(checkpoint["state_dict"][k], saved[k]) for k in saved)


def test_model_from_checkpoint_loads_the_saved_weights_in_eval_mode(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    model = model_from_checkpoint(checkpoint, str(loans["path"]))
    assert not model.training
    saved = loans["model"].state_dict()
    assert all(torch.equal(model.state_dict()[k], saved[k]) for k in saved)
    x = loans["dataset"].test.x
    with torch.no_grad():
        assert torch.equal(model(x), loans["model"].eval()(x))


def test_weights_that_do_not_fit_the_recipe_are_refused(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    key = next(iter(checkpoint["state_dict"]))
    wrong_shape = {**checkpoint, "state_dict": {**checkpoint["state_dict"], key: torch.zeros(2, 2)}}
    message = one_line_error(model_from_checkpoint, wrong_shape, "m.pt")
    assert message == "model file m.pt holds weights that do not fit its model recipe; the file is damaged"
    missing = {**checkpoint, "state_dict": {k: v for k, v in checkpoint["state_dict"].items() if k != key}}
    assert "do not fit" in one_line_error(model_from_checkpoint, missing, "m.pt")


def test_a_factory_recipe_in_a_file_needs_the_users_trust(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    foreign = {**checkpoint, "spec": {"name": "os:system", "kwargs": {}}}
    assert "--model-factory os:system" in one_line_error(model_from_checkpoint, foreign, "m.pt")


def test_a_file_that_is_not_a_rai_audit_model_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    message = one_line_error(load_checkpoint, str(path))
    assert (
        message == f"model file {path} is not a rai-audit model; expected a model.pt written by 'audit train'"
    )


def test_a_damaged_file_is_refused(loans, tmp_path):
    path = tmp_path / "cut.pt"
    path.write_bytes(loans["path"].read_bytes()[:200])
    message = one_line_error(load_checkpoint, str(path))
    assert message.startswith(f"model file {path} could not be read (")
    text = tmp_path / "notes.pt"
    text.write_text("not a model")
    assert f"model file {text} could not be read" in one_line_error(load_checkpoint, str(text))


def test_a_missing_file_is_refused(tmp_path):
    path = tmp_path / "none.pt"
    assert one_line_error(load_checkpoint, str(path)) == f"model file {path} does not exist"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda c: c.pop("state_dict"), "lacks its state_dict"),
        (lambda c: c["schema"].pop("classes"), "has a damaged schema (classes)"),
        (lambda c: c["schema"].update(kind="audio"), "has a damaged schema (kind)"),
        (lambda c: c["schema"].update(preprocessor=None), "lacks the preprocessing of its tabular data"),
    ],
)
def test_a_model_file_missing_a_part_is_refused(loans, tmp_path, change, says):
    checkpoint = load_checkpoint(str(loans["path"]))
    change(checkpoint)
    path = tmp_path / "part.pt"
    torch.save(checkpoint, path)
    message = one_line_error(load_checkpoint, str(path))
    assert str(path) in message and says in message


# --- defaults_from_checkpoint ------------------------------------------------------------


def test_builtin_data_is_taken_from_the_model_file(digits_model):
    config = RunConfig(command="evaluate", data=None)
    defaults_from_checkpoint(config, digits_model)
    assert config.data == "digits"
    # the same split as in training: fractions and seed come back, each recorded as from the model file
    assert (config.seed, config.test_fraction, config.val_fraction) == (5, 0.25, 0.1)
    assert config.sensitive == []
    for name in ("data", "seed", "test_fraction", "val_fraction", "sensitive"):
        assert config.sources[name] == "model file"


def test_mismatched_builtin_data_is_refused(digits_model):
    config = RunConfig(command="evaluate", data="adult")
    message = one_line_error(defaults_from_checkpoint, config, digits_model)
    assert message == "--data adult does not match the model, which was trained on digits"


def test_a_table_for_an_image_model_is_refused(digits_model):
    config = RunConfig(command="evaluate", data="rows.csv")
    assert "was trained on images (digits)" in one_line_error(defaults_from_checkpoint, config, digits_model)


def test_a_file_model_without_data_is_refused(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    config = RunConfig(command="evaluate", data=None)
    message = one_line_error(defaults_from_checkpoint, config, checkpoint)
    assert message == (
        "the model was trained on 'loans', not on built-in data; pass --data FILE with the rows to audit"
    )


def test_a_file_model_with_data_takes_groups_but_not_the_split(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    config = RunConfig(command="evaluate", data=str(loans["path"].parent / "new.csv"))
    defaults_from_checkpoint(config, checkpoint)
    assert config.sensitive == ["sex"] and config.sources["sensitive"] == "model file"
    # a user's file is one evaluation split: the training run's fractions and seed do not apply to it
    assert config.val_fraction == 0.1 and "val_fraction" not in config.sources
    assert config.seed == 0 and "seed" not in config.sources
    assert "data" not in config.sources


def test_sensitive_columns_the_user_gives_are_kept(loans):
    checkpoint = load_checkpoint(str(loans["path"]))
    config = RunConfig(
        command="evaluate", data="x.csv", sensitive=["age"], sources={"sensitive": "command line"}
    )
    defaults_from_checkpoint(config, checkpoint)
    assert config.sensitive == ["age"] and config.sources["sensitive"] == "command line"


class Payload:
    """An arbitrary object: a pickle holding it would run code on a full (not weights-only) load."""


def test_a_file_holding_code_objects_is_not_unpickled(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": MODEL_FORMAT, "payload": Payload()}, path)
    assert f"model file {path} could not be read (" in one_line_error(load_checkpoint, str(path))


# --- a model trained elsewhere ------------------------------------------------------------------------------------


def test_a_state_dict_loads_exactly_or_names_what_does_not_fit(tmp_path):
    from audit.checkpoint import load_state_dict_file, load_weights

    source = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.save(source.state_dict(), tmp_path / "w.pt")
    state = load_state_dict_file(str(tmp_path / "w.pt"))
    target = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    loaded = load_weights(target, state, path="w.pt", factory="m:f")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), source.state_dict().values()))
    assert not loaded.training
    other = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2), torch.nn.Linear(2, 2)
    )
    with pytest.raises(AuditError) as refused:
        load_weights(other, state, path="w.pt", factory="m:f")
    message = str(refused.value)
    assert "lacks 3.weight, 3.bias" in message and "0.weight (4, 3) where the model has (5, 3)" in message


def test_a_program_file_is_told_apart_by_its_archive(tmp_path):
    from audit.checkpoint import program_kind

    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    torch.jit.script(model).save(str(tmp_path / "ts.pt"))
    torch.export.save(torch.export.export(model, (torch.zeros(2, 3),)), tmp_path / "ep.pt2")
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert program_kind(str(tmp_path / "ts.pt")) == "torchscript"
    assert program_kind(str(tmp_path / "ep.pt2")) == "export"
    with pytest.raises(AuditError, match="neither a TorchScript archive"):
        program_kind(str(tmp_path / "w.pt"))


@pytest.mark.parametrize(
    "values, external",
    [
        ({"model_path": "runs/x/model.pt"}, False),
        ({"model_path": "pkg.mod:factory", "weights": "w.pt", "features_ready": True, "data": "d.csv"}, True),
        ({"program": "p.pt2", "features_ready": True, "data": "d.csv"}, True),
    ],
)
def test_evaluate_tells_a_saved_model_from_one_trained_elsewhere(values, external):
    from audit.checkpoint import is_external

    assert is_external(RunConfig(command="evaluate", **values)) is external

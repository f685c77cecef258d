"""audit.config: list parsing, RunConfig.resolve's precedence and provenance, validation, build_config, YAML."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from audit.config import (
    DEFAULT_PATIENCE,
    LARGE_BATCH,
    LARGE_BATCH_ROWS,
    MAX_EPOCHS,
    MIN_EPOCHS,
    MIN_STEPS,
    PATIENCE_STEPS,
    CliOption,
    RunConfig,
    build_config,
    list_type,
    load_yaml_config,
    parse_list,
)
from audit.errors import AuditError

# --- parse_list / list_type ---------------------------------------------------------------


def test_parse_list_casts_each_part_and_drops_blanks():
    assert parse_list("1, 2,,3 ,", int) == [1, 2, 3]
    assert parse_list(" sex , race ") == ["sex", "race"]
    assert parse_list("0.05,0.1", float) == [0.05, 0.1]
    assert parse_list("") == []
    assert parse_list(" , ,") == []


def test_parse_list_error_names_what_was_expected_and_the_value():
    with pytest.raises(ValueError) as info:
        parse_list("1,x", int, what="integers")
    assert str(info.value) == "expected comma-separated integers, got '1,x'"
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_list_type_is_an_argparse_type_with_one_line_errors():
    parse = list_type(int, what="integers")
    assert parse.__name__ == "integers"  # argparse names the type in its own messages
    assert parse("128,64") == [128, 64]
    with pytest.raises(argparse.ArgumentTypeError) as info:
        parse("128,big")
    assert str(info.value) == "expected comma-separated integers, got '128,big'"
    assert "\n" not in str(info.value)


def test_list_type_through_a_real_parser_gives_one_error():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--hidden", type=list_type(int, what="integers"))
    assert parser.parse_args(["--hidden", "8, 4"]).hidden == [8, 4]
    with pytest.raises(argparse.ArgumentError, match="expected comma-separated integers, got '8,x'"):
        parser.parse_args(["--hidden", "8,x"])


# --- RunConfig.resolve -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "batch", "lr"),
    [
        (100, 16, 1e-3),
        (720, 64, 1e-3),
        (LARGE_BATCH_ROWS - 1, 256, 1e-3),
        (LARGE_BATCH_ROWS, LARGE_BATCH, 3e-3),
        (100_000, LARGE_BATCH, 3e-3),
    ],
)
def test_core_defaults_are_keyed_to_training_rows(rows, batch, lr):
    config = RunConfig()
    config.resolve(train_rows=rows, plugin_defaults={})
    assert (config.batch_size, config.lr) == (batch, lr)
    assert config.sources["batch_size"] == f"default for {rows} training rows"
    assert config.sources["lr"] == f"default for batch size {batch}"
    assert config.resolved


@pytest.mark.parametrize("rows", [20, 100, 420, 720, 5_000, 14_000, LARGE_BATCH_ROWS, 29_305, 100_000])
def test_default_epochs_give_the_step_budget(rows):
    config = RunConfig()
    config.resolve(train_rows=rows, plugin_defaults={})
    steps = math.ceil(rows / config.batch_size)
    assert MIN_EPOCHS <= config.epochs <= MAX_EPOCHS
    # enough steps, unless capped; and no more epochs than the budget needs (beyond the floor)
    assert config.epochs * steps >= MIN_STEPS or config.epochs == MAX_EPOCHS
    assert config.epochs == MIN_EPOCHS or (config.epochs - 1) * steps < MIN_STEPS
    assert config.patience >= DEFAULT_PATIENCE and config.patience * steps >= PATIENCE_STEPS
    assert config.sources["epochs"].startswith(
        f"default for {rows} training rows at batch {config.batch_size}"
    )


def test_adult_sized_tables_keep_the_tuned_defaults():
    config = RunConfig()
    config.resolve(train_rows=29_305, plugin_defaults={})  # Adult's training split
    assert (config.batch_size, config.lr, config.epochs, config.patience) == (LARGE_BATCH, 3e-3, 10, 3)
    assert "patience" not in config.sources  # the built-in 3 epochs already cover the patience in steps


def test_a_small_table_gets_smaller_batches_and_more_epochs():
    config = RunConfig()
    config.resolve(train_rows=720, plugin_defaults={})  # a 1,000-row table's training split
    assert (config.batch_size, config.epochs, config.patience) == (64, 21, 7)  # 12 steps an epoch
    assert (
        config.sources["patience"] == "default for 12 steps an epoch: at least 80 steps without improvement"
    )


@pytest.mark.parametrize(
    ("given", "value"), [("epochs", 3), ("patience", 3), ("patience", None), ("batch_size", 256)]
)
def test_user_given_schedule_values_win(given, value):
    config = RunConfig(**{given: value}, sources={given: "command line"})
    config.resolve(train_rows=720, plugin_defaults={})
    assert getattr(config, given) == value and config.sources[given] == "command line"


def test_epochs_follow_a_user_given_batch_size():
    config = RunConfig(batch_size=256, sources={"batch_size": "command line"})
    config.resolve(train_rows=720, plugin_defaults={})
    assert config.epochs == math.ceil(MIN_STEPS / 3)  # 3 steps an epoch
    assert config.patience == math.ceil(PATIENCE_STEPS / 3)


def test_plugin_default_epochs_beat_the_core_rule():
    config = RunConfig()
    config.resolve(
        train_rows=720, plugin_defaults={"epochs": (4, "someplugin"), "patience": (2, "someplugin")}
    )
    assert (config.epochs, config.patience) == (4, 2)
    assert config.sources["epochs"] == config.sources["patience"] == "plugin someplugin"


def test_warmup_beyond_the_default_epochs_is_refused_at_resolve():
    config = build_config(
        {"schedule": "cosine", "warmup_epochs": 40}, {}, sources={"warmup_epochs": "command line"}
    )
    with pytest.raises(
        AuditError, match=r"^--warmup-epochs must be below the epochs, got 40 with 21 epochs$"
    ):
        config.resolve(train_rows=720, plugin_defaults={})


def test_core_lr_follows_a_user_given_batch_size():
    config = RunConfig(batch_size=2048, sources={"batch_size": "command line"})
    config.resolve(train_rows=50, plugin_defaults={})
    assert config.batch_size == 2048 and config.sources["batch_size"] == "command line"
    assert config.lr == 3e-3 and config.sources["lr"] == "default for batch size 2048"

    small = RunConfig(batch_size=32, sources={"batch_size": "command line"})
    small.resolve(train_rows=100_000, plugin_defaults={})
    assert small.lr == 1e-3


def test_plugin_default_beats_the_core_default():
    config = RunConfig()
    config.resolve(train_rows=100, plugin_defaults={"lr": (3e-3, "privacy")})
    assert config.lr == 3e-3  # the core's default at batch 16 would be 1e-3
    assert config.sources["lr"] == "plugin privacy"
    assert config.batch_size == 16


@pytest.mark.parametrize("source", ["command line", "config file run.yaml"])
def test_user_value_beats_a_plugin_default(source):
    config = RunConfig(lr=0.01, sources={"lr": source})
    config.resolve(train_rows=100, plugin_defaults={"lr": (3e-3, "privacy")})
    assert config.lr == 0.01
    assert config.sources["lr"] == source


def test_plugin_default_for_a_field_with_a_builtin_value_is_recorded():
    config = RunConfig()
    config.resolve(train_rows=100, plugin_defaults={"epochs": (3, "someplugin")})
    assert config.epochs == 3 and config.sources["epochs"] == "plugin someplugin"


def test_api_given_lr_beats_a_plugin_default():
    config = RunConfig(lr=0.01)  # the README's Python API: no sources
    config.resolve(train_rows=100, plugin_defaults={"lr": (3e-3, "privacy")})
    assert config.lr == 0.01


def test_resolve_runs_once():
    config = RunConfig()
    config.resolve(train_rows=100, plugin_defaults={})
    before = (config.batch_size, config.lr, config.epochs, config.patience, dict(config.sources))
    config.resolve(train_rows=100_000, plugin_defaults={"lr": (0.5, "other"), "epochs": (99, "other")})
    assert (config.batch_size, config.lr, config.epochs, config.patience, config.sources) == before


def test_set_from_records_each_value():
    config = RunConfig()
    config.set_from("model file", data="digits", seed=7)
    assert (config.data, config.seed) == ("digits", 7)
    assert config.sources == {"data": "model file", "seed": "model file"}


# --- validate ------------------------------------------------------------------------------


def test_momentum_given_with_adam_is_refused():
    config = RunConfig(momentum=0.5, sources={"momentum": "command line"})
    with pytest.raises(AuditError, match=r"^--momentum only applies with --optimizer sgd or rmsprop$"):
        config.validate()


def test_momentum_only_defaulted_with_adam_is_not_refused():
    RunConfig(optimizer="adam").validate()  # momentum 0.9 is the built-in default, not given


@pytest.mark.parametrize("optimizer", ["sgd", "rmsprop"])
def test_momentum_given_with_its_optimizer_is_accepted(optimizer):
    RunConfig(optimizer=optimizer, momentum=0.5, sources={"momentum": "command line"}).validate()


@pytest.mark.parametrize(
    ("field", "value", "needs"),
    [
        ("warmup_epochs", 1.0, "--schedule cosine"),
        ("step_size", 2, "--schedule step"),
        ("gamma", 0.1, "--schedule step"),
        ("drop_sensitive", True, "--sensitive"),
    ],
)
def test_options_given_without_their_choice_are_refused(field, value, needs):
    config = RunConfig(**{field: value}, sources={field: "config file c.yaml"})
    with pytest.raises(AuditError, match=f"only applies with {needs}$"):
        config.validate()


@pytest.mark.parametrize(
    ("values", "says"),
    [
        ({"epochs": 0}, "--epochs must be at least 1, got 0"),
        ({"lr": -1.0}, "--lr must be a finite positive number"),
        ({"lr": float("nan")}, "--lr must be a finite positive number"),
        ({"batch_size": 0}, "--batch-size must be at least 1"),
        ({"hidden": [8, 0]}, "--hidden sizes must be at least 1, got 8,0"),
        ({"weight_decay": float("inf")}, "--weight-decay must be a finite number"),
        ({"momentum": 1.0}, "--momentum must be in [0, 1)"),
        ({"optimizer": "lbfgs"}, "--optimizer 'lbfgs' is unknown; expected one of adam, adamw, sgd"),
        ({"schedule": "linear"}, "--schedule 'linear' is unknown"),
        ({"compress": ["prune", "zip"]}, "--compress 'zip' is unknown"),
        ({"dropout": 1.0}, "--dropout must be in [0, 1)"),
        ({"val_fraction": 0.5}, "--val-fraction must be in (0, 0.5), got 0.5"),
        ({"test_fraction": 0.0}, "--test-fraction must be in (0, 0.5)"),
        ({"seed": -1}, "--seed must be in [0, 4294967295]"),
        ({"patience": 0}, "--patience must be at least 1 epoch"),
        ({"device": "tpu"}, "--device 'tpu' is unknown"),
        (
            {"epochs": 2, "warmup_epochs": 2.0, "schedule": "cosine"},
            "--warmup-epochs must be in [0, --epochs)",
        ),
    ],
)
def test_validate_refuses_unusable_values_in_one_line(values, says):
    with pytest.raises(AuditError) as info:
        RunConfig(**values).validate()
    assert says in str(info.value)
    assert "\n" not in str(info.value)


def test_the_defaults_validate():
    RunConfig().validate()


# --- build_config, to_dict, plugin options ---------------------------------------------------


def test_build_config_routes_plugin_options_and_keeps_sources():
    dp = CliOption(("--dp",), {"action": "store_true"})
    config = build_config(
        {"epochs": 2, "dp": True},
        {"dp": dp},
        sources={"epochs": "command line", "options.dp": "command line"},
    )
    assert config.epochs == 2
    assert config.options == {"dp": True} and config.option("dp") is True
    assert config.sources == {"epochs": "command line", "options.dp": "command line"}


def test_build_config_refuses_an_unknown_key():
    with pytest.raises(
        AuditError, match=r"^option 'bogus' is unknown; expected a flag of 'audit train --help'$"
    ):
        build_config({"bogus": 1}, {})


def test_build_config_validates():
    with pytest.raises(AuditError, match="--momentum only applies"):
        build_config({"momentum": 0.5}, {}, sources={"momentum": "command line"})
    config = build_config({"momentum": 0.5, "optimizer": "sgd"}, {}, sources={"momentum": "command line"})
    assert config.momentum == 0.5


def test_to_dict_excludes_sources_and_is_json_able():
    config = RunConfig(sensitive=["sex"], options={"dp": True}, sources={"sensitive": "command line"})
    config.resolve(train_rows=100, plugin_defaults={})
    data = config.to_dict()
    assert "sources" not in data and "resolved" not in data
    assert data["sensitive"] == ["sex"] and data["options"] == {"dp": True}
    assert data["batch_size"] == 16 and data["lr"] == 1e-3
    assert json.loads(json.dumps(data)) == data


def test_cli_option_dest():
    assert CliOption(("--max-grad-norm",), {}).dest == "max_grad_norm"
    assert CliOption(("--eps", "-e"), {"dest": "epsilons"}).dest == "epsilons"


def test_default_options_fill_only_unset_values():
    config = RunConfig(options={"accountant": "prv", "max_grad_norm": None})
    config.default_options({"accountant": "rdp", "max_grad_norm": 1.0, "delta": 1e-5})
    assert config.options == {"accountant": "prv", "max_grad_norm": 1.0, "delta": 1e-5}


def test_refuse_without_names_every_given_flag():
    config = RunConfig(options={"epsilon": 3.0, "delta": None, "dp_baseline": False})
    with pytest.raises(AuditError, match=r"^--epsilon only applies with --dp$"):
        config.refuse_without(
            "--dp", {"--epsilon": "epsilon", "--delta": "delta", "--dp-baseline": "dp_baseline"}
        )
    config.options["delta"] = 1e-5
    with pytest.raises(AuditError, match=r"^--epsilon, --delta only apply with --dp$"):
        config.refuse_without("--dp", {"--epsilon": "epsilon", "--delta": "delta"})
    RunConfig().refuse_without("--dp", {"--epsilon": "epsilon"})  # nothing given: no error


# --- load_yaml_config ---------------------------------------------------------------------------


def test_yaml_keys_take_dashes_or_underscores(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("batch-size: 64\nhidden: [8, 4]\nno_early_stopping: true\n")
    assert load_yaml_config(str(path)) == {"batch_size": 64, "hidden": [8, 4], "no_early_stopping": True}


def test_empty_yaml_is_an_empty_mapping(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_yaml_config(str(path)) == {}


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("- a\n- b\n", "must hold a mapping of option: value, got list"),
        ("epochs: [1\nlr: 2\n", "is not valid YAML at line"),
    ],
)
def test_bad_yaml_is_refused_naming_the_file(tmp_path, text, says):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(AuditError) as info:
        load_yaml_config(str(path))
    assert str(path) in str(info.value) and says in str(info.value)


def test_missing_yaml_is_refused(tmp_path):
    with pytest.raises(AuditError, match="does not exist"):
        load_yaml_config(str(tmp_path / "nope.yaml"))

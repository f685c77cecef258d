"""audit.models: recipes (model_spec), building them (build_model), factories, BatchNorm replacement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from audit.errors import AuditError
from audit.models import MLP, SmallCNN, build_model, count_parameters, model_spec, replace_batchnorm

FACTORY = f"{__name__}:tiny_factory"


def tiny_factory(input_shape, num_classes):
    """A user's factory: takes the two keyword arguments a factory receives."""
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], num_classes))


def spec(name, input_shape, **kwargs):
    args = dict(
        name=name, input_shape=input_shape, num_classes=3, hidden=[16, 8], channels=[4, 8], dropout=0.0
    )
    return model_spec(**{**args, **kwargs})


def test_auto_picks_mlp_for_tables_and_cnn_for_images():
    assert spec("auto", (10,))["name"] == "mlp"
    assert spec("auto", (1, 8, 8))["name"] == "cnn"


def test_mlp_spec_flattens_the_input_shape():
    assert spec("mlp", (10,)) == {
        "name": "mlp",
        "kwargs": {"input_dim": 10, "num_classes": 3, "hidden": [16, 8], "dropout": 0.0},
    }
    assert spec("mlp", (3, 4, 5))["kwargs"]["input_dim"] == 60  # an MLP on images sees the flat pixels


def test_cnn_spec():
    assert spec("cnn", (1, 8, 8)) == {
        "name": "cnn",
        "kwargs": {"input_shape": [1, 8, 8], "num_classes": 3, "channels": [4, 8], "dropout": 0.0},
    }


def test_cnn_on_tabular_data_is_refused():
    with pytest.raises(AuditError, match=r"--model cnn needs image data \(C, H, W\).*input shape \(10,\)"):
        spec("cnn", (10,))


def test_factory_spec_passes_only_shape_and_classes():
    assert spec("pkg.mod:make", (10,)) == {
        "name": "pkg.mod:make",
        "kwargs": {"input_shape": [10], "num_classes": 3},
    }


def test_unknown_model_name_is_refused():
    with pytest.raises(AuditError, match="--model 'resnet' is unknown; expected auto, mlp, cnn"):
        spec("resnet", (10,))


def test_build_model_round_trip_mlp():
    torch.manual_seed(0)
    model = build_model(spec("mlp", (10,)))
    assert isinstance(model, MLP)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [tuple(m.weight.shape) for m in linears] == [(16, 10), (8, 16), (3, 8)]
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert model(torch.randn(5, 10)).shape == (5, 3)
    assert count_parameters(model) == (10 * 16 + 16) + (16 * 8 + 8) + (8 * 3 + 3)


def test_mlp_dropout_adds_one_dropout_per_hidden_layer():
    model = build_model(spec("mlp", (10,), dropout=0.25))
    dropouts = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2 and all(d.p == 0.25 for d in dropouts)


def test_build_model_round_trip_cnn():
    model = build_model(spec("cnn", (1, 8, 8)))
    assert isinstance(model, SmallCNN)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 3)


def test_a_damaged_builtin_recipe_is_refused():
    recipe = spec("mlp", (10,))
    recipe["kwargs"]["input_dim"] = "ten"
    with pytest.raises(AuditError, match="the mlp recipe is damaged"):
        build_model(recipe)
    with pytest.raises(AuditError, match="the model recipe is damaged"):
        build_model({"name": "mlp"})
    with pytest.raises(AuditError, match="the model recipe names 'rnn'"):
        build_model({"name": "rnn", "kwargs": {}})


def test_a_factory_recipe_is_built_only_when_the_user_trusts_that_factory():
    recipe = spec(FACTORY, (6,))
    with pytest.raises(AuditError, match=f"pass --model-factory {FACTORY}"):
        build_model(recipe)
    with pytest.raises(AuditError, match="never chooses code to run"):
        build_model(recipe, trusted_factory="other.module:factory")
    model = build_model(recipe, trusted_factory=FACTORY)
    assert model(torch.randn(4, 6)).shape == (4, 3)


def test_a_factory_whose_model_does_not_fit_the_data_is_refused():
    bad = {"name": FACTORY, "kwargs": {"input_shape": [6, 2], "num_classes": 3}}  # Linear(6) on 12 features
    with pytest.raises(AuditError, match=r"failed on inputs of shape \(2, 6, 2\)"):
        build_model(bad, trusted_factory=FACTORY)


def test_replace_batchnorm_uses_per_sample_normalisers_and_counts():
    model = nn.Sequential(
        nn.Linear(4, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 64, 1), nn.BatchNorm2d(64)),
    )
    fixed, count = replace_batchnorm(model)
    assert fixed is model and count == 3
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fixed.modules())
    assert isinstance(fixed[1], nn.LayerNorm) and fixed[1].normalized_shape == (8,)
    small, large = fixed[3][1], fixed[3][3]
    assert isinstance(small, nn.GroupNorm) and (small.num_groups, small.num_channels) == (4, 4)
    assert isinstance(large, nn.GroupNorm) and (large.num_groups, large.num_channels) == (32, 64)


def test_replaced_batchnorm1d_keeps_per_sample_outputs_independent_and_nonzero():
    torch.manual_seed(0)
    model, _ = replace_batchnorm(nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)))
    x = torch.randn(5, 4)
    out = model(x)
    assert torch.allclose(out[:1], model(x[:1]), atol=1e-6)  # no mixing across the batch
    assert out.abs().sum() > 0  # GroupNorm(C, C) on (N, C) would map every activation to zero


def test_replace_batchnorm_without_batchnorm_counts_zero():
    model = build_model(spec("mlp", (10,)))
    assert replace_batchnorm(model)[1] == 0


def test_an_exported_program_acts_as_a_module_in_eval_mode_with_gradients():
    from audit.models import ExportedModule, check_outputs

    source = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    batch = torch.export.Dim("batch")
    program = torch.export.export(source, (torch.zeros(4, 3),), dynamic_shapes=({0: batch},)).module()
    with pytest.raises(NotImplementedError, match="eval"):
        program.eval()  # why the wrapper exists
    model = ExportedModule(program).eval()
    assert sum(p.numel() for p in model.parameters()) == 26
    x = torch.randn(5, 3, requires_grad=True)
    model(x).sum().backward()  # the attacks need input gradients
    assert x.grad is not None and torch.allclose(model(x), source(x))
    check_outputs(model, what="the program", input_shape=(3,), classes=2)
    with pytest.raises(
        AuditError, match=r"the program returns outputs of shape \(2, 2\) for 2 rows; expected \(2, 3\)"
    ):
        check_outputs(model, what="the program", input_shape=(3,), classes=3)

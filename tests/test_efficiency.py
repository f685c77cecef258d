"""audit.efficiency: size, FLOPs, latency, pruning, quantization, compression rows and the section."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import load_dataset
from audit.efficiency import (
    SECTION_ORDER,
    compression_rows,
    efficiency_section,
    efficiency_summary,
    flops_per_sample,
    latency_ms,
    model_size_bytes,
    prune_magnitude,
    quantize_dynamic_int8,
    sparse_size_bytes,
)
from audit.engine import TrainResult
from audit.models import build_model, count_parameters, model_spec
from tests.conftest import make_loans

# torch's deprecation note on the eager int8 kernels that quantize measures with (the CLI silences it too)
pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor")


@pytest.fixture(scope="module")
def loans(tmp_path_factory):
    path = tmp_path_factory.mktemp("eff") / "loans.csv"
    make_loans(400).to_csv(path, index=False)
    config = RunConfig(data=str(path), target="defaulted")
    return config, load_dataset(config)


def mlp_for(dataset, hidden=(8,)):
    torch.manual_seed(0)
    spec = model_spec(
        name="mlp",
        input_shape=dataset.input_shape,
        num_classes=dataset.num_classes,
        hidden=list(hidden),
        channels=[],
        dropout=0.0,
    )
    return build_model(spec)


def labelled_by(model, x):
    """Labels the model itself predicts: its accuracy on them is exactly 1."""
    with torch.no_grad():
        return model.eval()(x).argmax(1)


def test_model_size_is_the_saved_state_dict():
    model = nn.Linear(10, 4)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    assert model_size_bytes(model) == len(buffer.getvalue())
    large = nn.Linear(100, 40)
    assert model_size_bytes(large) >= count_parameters(large) * 4 > model_size_bytes(model)  # float32 weights


def test_flops_of_a_linear_layer_count_a_multiply_add_as_two():
    # FlopCounterMode counts addmm/mm as 2 * M * K * N; the bias add and activations are not counted.
    assert flops_per_sample(nn.Linear(4, 3), torch.zeros(1, 4)) == 2 * 4 * 3
    assert flops_per_sample(nn.Linear(4, 3, bias=False), torch.zeros(1, 4)) == 2 * 4 * 3
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    assert flops_per_sample(mlp, torch.zeros(1, 4)) == 2 * (4 * 8 + 8 * 2)


def test_flops_are_per_sample_and_restore_the_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.Linear(8, 2)).train()
    assert flops_per_sample(model, torch.zeros(64, 4)) == 2 * (4 * 8 + 8 * 2)
    assert model.training


def test_latency_percentiles_are_ordered_and_restore_the_mode():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 2)).train()
    p50, p95 = latency_ms(model, torch.randn(8, 16), repeats=10, warmup=1)
    assert 0 < p50 <= p95
    assert model.training


def test_prune_magnitude_zeroes_the_smallest_weights_on_a_copy():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    before = [m.weight.detach().clone() for m in (model[0], model[2])]
    pruned, sparsity = prune_magnitude(model, amount=0.3)
    assert sparsity == pytest.approx(0.3, abs=1 / 750)
    weights = torch.cat([m.weight.detach().flatten() for m in (pruned[0], pruned[2])])
    assert float((weights == 0).float().mean()) == pytest.approx(sparsity)
    original = torch.cat([w.flatten() for w in before])
    assert original[weights == 0].abs().max() <= original[weights != 0].abs().min()  # global L1
    assert torch.equal(model[0].weight, before[0])  # the original is untouched
    assert not any("weight_orig" in k for k in pruned.state_dict())  # the pruning was made permanent
    assert pruned[0].bias is not None and torch.equal(pruned[0].bias, model[0].bias)


def test_sparse_size_is_smaller_only_when_sparse_storage_pays():
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    assert sparse_size_bytes(model) <= model_size_bytes(model)  # dense tensors stay dense
    very_sparse, sparsity = prune_magnitude(model, amount=0.95)
    assert sparsity == pytest.approx(0.95, abs=1e-3)
    assert sparse_size_bytes(very_sparse) < 0.5 * model_size_bytes(very_sparse)


def test_quantize_keeps_accuracy_close_and_shrinks_large_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 4))
    x = torch.randn(500, 64)
    y = labelled_by(model, x)
    quantized = quantize_dynamic_int8(model)
    with torch.no_grad():
        agree = float((quantized(x).argmax(1) == y).float().mean())
    assert agree >= 0.95
    assert model_size_bytes(quantized) < 0.5 * model_size_bytes(model)
    assert all(isinstance(m, nn.Linear) for m in (model[0], model[2]))  # the original stays float


def test_compression_rows_names_and_values(loans):
    _, data = loans
    model = mlp_for(data, hidden=(32,))
    x, y = data.test.x, labelled_by(model, data.test.x)
    rows, metrics = compression_rows(model, x, y, ["quantize", "prune"], repeats=2)
    assert [r[0] for r in rows] == ["original", "quantize", "prune"]
    assert rows[0][3] == 1.0
    per_method = {"size_bytes", "latency_ms_b256_p50", "accuracy", "accuracy_drop"}
    assert set(metrics) == {f"efficiency.quantize.{m}" for m in per_method} | {
        f"efficiency.prune.{m}" for m in per_method | {"sparsity"}
    }
    assert metrics["efficiency.prune.sparsity"] == pytest.approx(0.5, abs=0.01)
    for method, row in (("quantize", rows[1]), ("prune", rows[2])):
        assert row[1] == metrics[f"efficiency.{method}.size_bytes"]
        assert row[3] == round(metrics[f"efficiency.{method}.accuracy"], 4)
        assert metrics[f"efficiency.{method}.accuracy_drop"] == pytest.approx(
            1.0 - metrics[f"efficiency.{method}.accuracy"]
        )
    assert metrics["efficiency.quantize.accuracy"] >= 0.9


def test_accuracy_drop_is_zero_when_compression_changes_no_prediction():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(3, 8)
    y = labelled_by(model, x)
    y[0] = (y[0] + 1) % 3  # accuracy 2/3: a value rounding changes
    _, metrics = compression_rows(model, x, y, ["quantize"], repeats=1)
    assert metrics["efficiency.quantize.accuracy"] == pytest.approx(2 / 3)
    assert metrics["efficiency.quantize.accuracy_drop"] == 0.0


def test_efficiency_section_with_training_and_compression(loans):
    config, data = loans
    config = RunConfig(data=config.data, target=config.target, compress=["quantize", "prune"])
    model = mlp_for(data)
    result = TrainResult(
        history=[{"epoch": 1}, {"epoch": 2}],
        best_epoch=2,
        stopped_early=False,
        steps=6,
        samples_seen=600,
        train_time_s=0.5,
        wall_time_s=0.75,
        warnings=[],
    )
    section = efficiency_section(model, data, torch.device("cpu"), config, result)
    assert section.name == "efficiency" and section.order == SECTION_ORDER == 20
    m = section.metrics
    assert m["efficiency.train_wall_s"] == 0.75 and m["efficiency.train_time_s"] == 0.5
    assert m["efficiency.epoch_time_s"] == 0.25
    assert m["efficiency.train_samples_per_s"] == pytest.approx(1200.0)
    assert (m["efficiency.epochs_run"], m["efficiency.steps"]) == (2, 6)
    assert m["efficiency.params"] == count_parameters(model)
    assert m["efficiency.model_size_bytes"] == model_size_bytes(model)
    assert m["efficiency.flops_per_sample"] == 2 * (data.input_shape[0] * 8 + 8 * 2)
    assert m["efficiency.peak_rss_mb"] > 0
    assert 0 < m["efficiency.latency_ms_p50"] <= m["efficiency.latency_ms_p95"]
    assert 0 < m["efficiency.latency_ms_b256_p50"] <= m["efficiency.latency_ms_b256_p95"]
    assert "efficiency.cuda_peak_mb" not in m
    assert {"efficiency.quantize.accuracy", "efficiency.prune.sparsity"} <= set(m)
    assert all(name.startswith("efficiency.") for name in m)
    (table,) = section.tables
    assert [row[0] for row in table.rows] == ["original", "quantize", "prune"]
    assert any("device cpu" in note for note in section.notes)


def test_efficiency_section_without_training_has_no_training_figures(loans):
    config, data = loans
    section = efficiency_section(mlp_for(data), data, torch.device("cpu"), config, None)
    assert not [name for name in section.metrics if name.startswith("efficiency.train")]
    assert "efficiency.steps" not in section.metrics and "efficiency.epochs_run" not in section.metrics
    assert "efficiency.latency_ms_p50" in section.metrics and section.tables == []


def test_the_summary_says_what_the_model_costs_in_words():
    metrics = {
        "efficiency.train_wall_s": 2.0,
        "efficiency.train_samples_per_s": 12345.6,
        "efficiency.peak_rss_mb": 512.4,
        "efficiency.params": 2048,
        "efficiency.model_size_bytes": 8192,
        "efficiency.latency_ms_p50": 0.0312,
    }
    assert efficiency_summary(metrics) == [
        "Training took 2.0 s (12,346 samples/s); peak memory 512 MB; 2,048 parameters (8 KiB); "
        "one prediction takes 0.031 ms (median)."
    ]
    assert efficiency_summary({"efficiency.params": None}) == []  # nothing measured: nothing said

import math

import pytest
import torch

from audit.config import RunConfig
from audit.engine import (
    EarlyStopping,
    HealthChecks,
    PoissonBatches,
    ShuffledBatches,
    TrainingStep,
    train,
    validate,
)
from audit.errors import TrainingDiverged
from tests.conftest import small_setup


def test_same_seed_gives_same_weights(loans_data):
    config = RunConfig(epochs=2, lr=1e-2, batch_size=64)
    a, b = small_setup(config, loans_data), small_setup(config, loans_data)
    train(a, progress=False), train(b, progress=False)
    for pa, pb in zip(a.base_model.parameters(), b.base_model.parameters()):
        assert torch.equal(pa, pb)


def test_nan_loss_stops_with_the_step_named(loans_data):
    config = RunConfig(epochs=2, lr=1e-2, batch_size=64)
    setup = small_setup(config, loans_data)
    calls = {"n": 0}
    base = setup.criterion

    def poisoned(logits, y):
        calls["n"] += 1
        loss = base(logits, y)
        return loss * math.nan if calls["n"] == 5 else loss

    setup.criterion = poisoned
    with pytest.raises(TrainingDiverged, match="epoch 1, step 5"):
        train(setup, progress=False)


def test_early_stopping_keeps_the_best_epoch(loans_data):
    config = RunConfig(epochs=30, lr=0.5, batch_size=32, optimizer="sgd", patience=2)
    setup = small_setup(config, loans_data)
    result = train(setup, progress=False)
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert validate(setup)[0] == pytest.approx(best["val_loss"], rel=1e-5)


def test_a_diverging_gradient_norm_is_named(loans_data):
    setup = small_setup(RunConfig(epochs=2, lr=1e-2, batch_size=64, grad_clip=None), loans_data)
    calls = {"n": 0}

    def backward(loss, rows):
        loss.backward()
        calls["n"] += 1
        if calls["n"] == setup.batch_sampler.steps_per_epoch + 3:  # epoch 2, step 3
            next(setup.base_model.parameters()).grad.fill_(math.inf)

    setup.backward = backward
    with pytest.raises(TrainingDiverged, match="the gradient norm became inf at epoch 2, step 3"):
        train(setup, progress=False)


def test_history_records_keep_their_keys_and_order(loans_data):
    setup = small_setup(RunConfig(epochs=2, lr=1e-2, batch_size=64, patience=None), loans_data)
    result = train(setup, progress=False, after_epoch=lambda state: [{"extra": state.steps_done}, None])
    keys = [
        "epoch",
        "train_loss",
        "val_loss",
        "val_accuracy",
        "lr",
        "epoch_time_s",
        "grad_norm_median",
        "extra",
    ]
    assert [list(h) for h in result.history] == [keys, keys]
    steps = setup.batch_sampler.steps_per_epoch
    assert [h["extra"] for h in result.history] == [steps, 2 * steps]
    assert (result.steps, result.samples_seen) == (2 * steps, 2 * len(loans_data.train))
    assert (result.best_epoch, result.stopped_early, result.warnings) == (2, False, [])


def test_training_step_weights_rows_and_reports_no_norm_when_untracked(loans_data):
    setup = small_setup(RunConfig(epochs=1, lr=0.0, batch_size=64, grad_clip=None), loans_data)
    idx = torch.arange(10)
    plain_loss, plain_norm = TrainingStep(setup)(idx)
    setup.sample_weights = torch.full((len(loans_data.train),), 2.0)
    setup.track_grad_norm = False
    weighted_loss, weighted_norm = TrainingStep(setup)(idx)
    assert plain_norm is not None and weighted_norm is None
    assert float(weighted_loss) == pytest.approx(2 * float(plain_loss))


def test_early_stopping_restores_the_best_state():
    model = torch.nn.Linear(2, 1)
    stopping = EarlyStopping("val_loss", patience=2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    assert not stopping.update(1, {"val_loss": 0.5, "val_accuracy": 0.7}, model)
    with torch.no_grad():
        model.weight.fill_(2.0)
    assert not stopping.update(2, {"val_loss": 0.6, "val_accuracy": 0.8}, model)
    assert stopping.update(3, {"val_loss": math.nan, "val_accuracy": math.nan}, model)  # NaN never improves
    assert stopping.restore(model, epochs_run=3) == 1
    assert torch.equal(model.weight, torch.ones(1, 2))


def test_early_stopping_on_accuracy_and_without_patience():
    model = torch.nn.Linear(2, 1)
    on_accuracy = EarlyStopping("val_accuracy", patience=5)
    on_accuracy.update(1, {"val_loss": 0.5, "val_accuracy": 0.7}, model)
    on_accuracy.update(2, {"val_loss": 0.9, "val_accuracy": 0.8}, model)
    assert on_accuracy.best_epoch == 2
    off = EarlyStopping("val_loss", patience=None)
    assert not any(off.update(e, {"val_loss": 1.0, "val_accuracy": 0.5}, model) for e in range(1, 10))
    assert off.restore(model, epochs_run=9) == 9  # no early stopping: the last epoch's weights are kept


def test_health_checks_warn_once_on_exploding_gradient_norms():
    health = HealthChecks()
    health.check_grad_norms(1, torch.tensor([1.0, 2.0, 3.0]))
    health.check_grad_norms(2, torch.tensor([1.0, 250.0]))
    health.check_grad_norms(3, torch.tensor([1.0, 900.0]))
    assert health.warnings == [
        "exploding gradient norms: epoch 2 reached 250, over 100x the first epoch's median 2"
    ]


def test_health_checks_warn_when_the_validation_loss_diverges():
    health = HealthChecks()
    losses = [1.0, 0.4, 0.7, 0.5, 0.65]
    health.check_validation([{"epoch": e, "val_loss": v} for e, v in enumerate(losses, 1)])
    assert health.warnings == ["validation loss diverged: 0.6500 at epoch 5 against the lowest 0.4000"]
    recovered = HealthChecks()
    recovered.check_validation([{"epoch": e, "val_loss": v} for e, v in enumerate([*losses, 0.45], 1)])
    assert recovered.warnings == []


def test_health_checks_ignore_a_missing_validation_split():
    health = HealthChecks()
    health.check_validation([{"epoch": e, "val_loss": math.nan} for e in (1, 2, 3)])
    assert health.warnings == []


def test_samplers_cover_rows():
    gen = torch.Generator().manual_seed(0)
    batches = list(ShuffledBatches(num_rows=10, batch_size=4)(gen))
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    poisson = PoissonBatches(num_rows=10000, sample_rate=0.01)
    sizes = [len(b) for b in poisson(gen)]
    assert len(sizes) == 100 and 80 < sum(sizes) / len(sizes) < 120


@pytest.mark.parametrize("num_rows, rate", [(10000, 0.01), (300, 0.3), (50, 0.9), (7, 1.0)])
def test_poisson_batches_are_a_bernoulli_process(num_rows, rate):
    # the sampler draws the gaps between kept rows; the result must be each row kept independently with probability q
    sampler = PoissonBatches(num_rows=num_rows, sample_rate=rate)
    gen = torch.Generator().manual_seed(1)
    draws = [sampler.sample(gen) for _ in range(2000)]
    hits = torch.zeros(num_rows)
    for batch in draws:
        assert batch.dtype == torch.long and (batch.diff() > 0).all()  # sorted, no row twice
        assert len(batch) == 0 or (0 <= int(batch.min()) and int(batch.max()) < num_rows)
        hits[batch] += 1
    sizes = torch.tensor([len(b) for b in draws], dtype=torch.float64)
    mean, var = num_rows * rate, num_rows * rate * (1 - rate)
    assert abs(float(sizes.mean()) - mean) < 4 * math.sqrt(var / 2000) + 1e-9
    if var > 0:
        assert 0.85 < float(sizes.var()) / var < 1.15
    per_row = hits / 2000
    assert float((per_row - rate).abs().max()) < 5 * math.sqrt(rate * (1 - rate) / 2000) + 1e-9
    # the first and last rows are as likely as any other (no edge effect at 0 or N-1)
    assert abs(float(per_row[0]) - rate) < 5 * math.sqrt(rate * (1 - rate) / 2000) + 1e-9

import math

import pytest
import torch

from audit.config import RunConfig
from audit.data import load_dataset
from audit.engine import PoissonBatches, ShuffledBatches, train
from audit.errors import TrainingDiverged
from audit.models import model_spec
from audit.training import attach_scheduler, build_setup, seed_everything


def _setup(config, data):
    gen = seed_everything(config.seed)
    spec = model_spec(
        name="auto",
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        hidden=[16],
        channels=[8, 8],
        dropout=0.0,
    )
    setup = build_setup(config, data, torch.device("cpu"), gen, spec)
    attach_scheduler(setup)
    return setup


@pytest.fixture(scope="module")
def loans_data(tmp_path_factory):
    from tests.conftest import make_loans

    path = tmp_path_factory.mktemp("d") / "loans.csv"
    make_loans(2000).to_csv(path, index=False)
    return load_dataset(RunConfig(data=str(path), target="defaulted", sensitive=["sex"]))


def test_same_seed_gives_same_weights(loans_data):
    config = RunConfig(epochs=2, lr=1e-2, batch_size=64)
    a, b = _setup(config, loans_data), _setup(config, loans_data)
    train(a, progress=False), train(b, progress=False)
    for pa, pb in zip(a.base_model.parameters(), b.base_model.parameters()):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
@pytest.mark.parametrize("schedule", ["none", "step", "cosine", "onecycle"])
def test_optimizers_and_schedules_learn(loans_data, optimizer, schedule):
    config = RunConfig(
        epochs=3,
        lr=1e-2,
        batch_size=64,
        optimizer=optimizer,
        schedule=schedule,
        warmup_epochs=0.5,
        label_smoothing=0.05,
        grad_clip=5.0,
        patience=None,
    )
    result = train(_setup(config, loans_data), progress=False)
    assert result.history[-1]["val_accuracy"] > 0.6
    assert len(result.history) == 3


def test_nan_loss_stops_with_the_step_named(loans_data):
    config = RunConfig(epochs=2, lr=1e-2, batch_size=64)
    setup = _setup(config, loans_data)
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
    setup = _setup(config, loans_data)
    result = train(setup, progress=False)
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    from audit.engine import _validate

    assert _validate(setup)[0] == pytest.approx(best["val_loss"], rel=1e-5)


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

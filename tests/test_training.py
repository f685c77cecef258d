import pytest
import torch

from audit.config import RunConfig
from audit.engine import train
from audit.training import (
    forked_random_state,
    make_optimizer,
    per_sample_criterion,
    resolve_device,
    seed_everything,
)
from tests.conftest import small_setup


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
    result = train(small_setup(config, loans_data), progress=False)
    assert result.history[-1]["val_accuracy"] > 0.6
    assert len(result.history) == 3


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "adagrad"])
def test_make_optimizer_builds_the_named_one(name):
    params = [torch.nn.Parameter(torch.zeros(3))]
    optimizer = make_optimizer(RunConfig(optimizer=name, lr=0.25), params)
    assert type(optimizer).__name__.lower() == name
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_seed_everything_repeats_draws():
    a = seed_everything(7)
    first = (torch.rand(3), torch.randperm(10, generator=a))
    b = seed_everything(7)
    assert torch.equal(first[0], torch.rand(3)) and torch.equal(first[1], torch.randperm(10, generator=b))


def test_per_sample_criterion_keeps_one_loss_a_row():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0]]), torch.tensor([0, 0, 1])
    losses = per_sample_criterion(0.0)(logits, target)
    assert losses.shape == (3,)
    assert float(losses.mean()) == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)))


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_forked_random_state_leaves_the_runs_own_draws_unchanged():
    """An audit's own training (canaries, reference models) must not shift the released run's random streams."""
    import numpy as np
    import torch

    torch.manual_seed(3)
    np.random.seed(3)
    expected = (torch.rand(4), np.random.rand(4))
    torch.manual_seed(3)
    np.random.seed(3)
    with forked_random_state():
        torch.rand(100), np.random.rand(100)
    assert torch.equal(torch.rand(4), expected[0]) and np.array_equal(np.random.rand(4), expected[1])
    torch.manual_seed(3)
    np.random.seed(3)
    torch.rand(100), np.random.rand(100)  # without the fork the streams do move
    assert not torch.equal(torch.rand(4), expected[0])


def test_forked_random_state_survives_a_reseed_inside_it():
    """The canary run reseeds inside the fork (seed_everything): Python's stream and CUDA's must come back too."""
    import random

    import numpy as np

    def draws() -> tuple:
        cuda = torch.rand(4, device="cuda").cpu() if torch.cuda.is_available() else torch.zeros(4)
        return random.random(), torch.rand(4), np.random.rand(4), cuda

    seed_everything(3)
    expected = draws()
    seed_everything(3)
    with forked_random_state():
        seed_everything(99)
        draws()
    got = draws()
    assert got[0] == expected[0]
    assert all(torch.equal(a, b) for a, b in ((got[1], expected[1]), (got[3], expected[3])))
    assert np.array_equal(got[2], expected[2])

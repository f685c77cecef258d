"""The one-run audit's training run: canaries through the real DP-SGD path, sound on correct DP-SGD, loud on broken."""

import dataclasses

import numpy as np
import pytest
import torch

from audit.config import RunConfig
from audit.engine import train
from audit.training import attach_scheduler, build_setup, model_spec_for, seed_everything
from audit_plugins import dp_clipping, privacy
from audit_plugins.dp_audit import audit_scores
from audit_plugins.dp_canaries import CANARY_NORM_FACTOR, GradientCanaries, ReleasedRun, run_canaries


def _released(dataset, *, epsilon, seed=0, delta=1e-4, **overrides):
    """A released DP-SGD run through the privacy plugin's hooks, as the runner trains it."""
    options = {"dp": True, "epsilon": epsilon, "delta": delta, "max_grad_norm": 1.0, "accountant": "rdp"}
    recipe = dict(data="loans", hidden=[256], epochs=4, batch_size=64, seed=seed, quiet=True, options=options)
    config = RunConfig(**{**recipe, **overrides})
    config.resolve(train_rows=len(dataset.train), plugin_defaults={"lr": (privacy.DP_DEFAULT_LR, "privacy")})
    setup = build_setup(
        config, dataset, torch.device("cpu"), seed_everything(seed), model_spec_for(config, dataset)
    )
    privacy.audit_prepare_training(setup)
    attach_scheduler(setup)
    train(setup, progress=False)
    privacy.audit_after_training(setup)
    state = setup.artifacts["privacy"]
    released = ReleasedRun(
        noise_multiplier=state.noise_multiplier,
        max_grad_norm=state.max_grad_norm,
        sample_rate=state.sample_rate,
        steps=state.steps(),
        delta=state.delta,
        epsilon=state.epsilon(),
    )
    return config, setup, released


def _audit(config, data, released, prepare=privacy.audit_prepare_training, count=500):
    scores = run_canaries(
        config=config,
        dataset=data,
        device=torch.device("cpu"),
        released=released,
        prepare=prepare,
        finish=privacy.audit_after_training,
        count=count,
    )
    kwargs = dict(delta=released.delta, confidence=0.975)
    return (
        scores,
        audit_scores(scores.whitebox_scores, scores.whitebox_included, **kwargs).epsilon_lower_bound,
        audit_scores(scores.blackbox_scores, scores.blackbox_included, **kwargs).epsilon_lower_bound,
    )


@pytest.mark.parametrize("epsilon,seed", [(1.0, 0), (2.0, 1), (4.0, 2), (8.0, 0)])
def test_correct_dp_sgd_is_never_audited_above_its_epsilon(loans_data, epsilon, seed):
    config, _, released = _released(loans_data, epsilon=epsilon, seed=seed)
    scores, whitebox, blackbox = _audit(config, loans_data, released)
    assert scores.epsilon == pytest.approx(released.epsilon) and scores.steps == released.steps
    assert whitebox <= released.epsilon and blackbox <= released.epsilon
    if epsilon == 8.0:  # not a bound stuck at 0: at epsilon 8 the white-box canaries are told apart
        assert whitebox > 0.3


def test_dp_sgd_without_clipping_is_caught(loans_data, monkeypatch):
    config, _, released = _released(loans_data, epsilon=1.0)
    # the bug: the real clipping rule lets every per-sample gradient through whole (rows and canaries alike)
    monkeypatch.setattr(dp_clipping, "clip_factors", lambda norms, max_grad_norm: torch.ones_like(norms))
    _, whitebox, _ = _audit(config, loans_data, released)
    assert whitebox > 1.0


def test_dp_sgd_with_a_tenth_of_the_noise_is_caught(loans_data):
    config, _, released = _released(loans_data, epsilon=1.0)

    def prepare_with_bug(setup):
        privacy.audit_prepare_training(setup)
        setup.optimizer.noise_multiplier /= 10  # the bug: the optimizer adds a tenth of the accounted noise

    _, whitebox, _ = _audit(config, loans_data, released, prepare=prepare_with_bug)
    assert whitebox > 1.0


def test_the_audit_run_leaves_the_released_model_and_random_streams_alone(loans_data):
    config, setup, released = _released(loans_data, epsilon=2.0)
    weights = {k: v.clone() for k, v in setup.base_model.state_dict().items()}
    torch_state, np_state = torch.get_rng_state(), np.random.get_state()
    _audit(config, loans_data, released, count=50)
    assert all(torch.equal(weights[k], v) for k, v in setup.base_model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], np_state[1])


def test_the_audit_run_refuses_to_audit_another_mechanism(loans_data):
    config, _, released = _released(loans_data, epsilon=2.0)
    with pytest.raises(RuntimeError, match="not the released"):
        _audit(config, loans_data, dataclasses.replace(released, steps=released.steps + 1), count=50)


def test_canary_gradients_are_larger_than_the_clipping_norm():
    # a canary that clipping would not shrink could not reveal a run that does not clip
    assert CANARY_NORM_FACTOR > 1


@pytest.mark.slow
def test_adult_at_epsilon_8_is_audited_to_at_least_2_in_one_run():
    # Adult's full training split in one Poisson batch, one DP-SGD step (q = 1, T = 1): the setting in which
    # one run's canaries say most; the default recipe (batch 1024, 10 epochs) reaches about 1.8 to 1.9.
    from audit.data import load_dataset

    data = load_dataset(RunConfig(data="adult"))
    config, _, released = _released(
        data, epsilon=8.0, delta=1e-5, data="adult", hidden=[128, 64], epochs=1, batch_size=len(data.train)
    )
    assert released.sample_rate == 1.0 and released.steps == 1
    scores, whitebox, _ = _audit(config, data, released, count=2000)
    assert 2.0 <= whitebox <= released.epsilon


def _canaries(model, count=6):
    params = [p for p in model.parameters() if p.requires_grad]
    busy = torch.zeros(sum(p.numel() for p in params))
    return GradientCanaries(params, count=count, generator=torch.Generator().manual_seed(0), busy=busy)


def test_one_pass_canaries_are_clipped_by_the_real_rule_and_added_to_the_sums():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    canaries = _canaries(model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    mask = torch.ones(len(canaries.coords), dtype=torch.float64)
    canaries.add_to_sums(canaries.clipped_values(mask, 0.5))
    flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    # each canary's gradient is 10 C, clipped to C = 0.5 along its coordinate, with its sign
    assert torch.allclose(flat[canaries.coords].double(), 0.5 * canaries.signs, atol=1e-6)
    assert int((flat != 0).sum()) == len(canaries.coords)


def test_opacus_path_canaries_join_the_per_sample_gradients_unclipped():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    canaries = _canaries(model)
    for p in model.parameters():
        p.grad_sample = torch.zeros(5, *p.shape)  # five real rows
    mask = torch.zeros(len(canaries.coords), dtype=torch.float64)
    mask[[1, 4]] = 1
    canaries.add_rows(mask, 0.5)
    rows = torch.cat([p.grad_sample.reshape(7, -1) for p in model.parameters()], dim=1)
    assert rows.shape[0] == 7 and not rows[:5].any()
    for row, canary in zip(rows[5:], (1, 4)):  # Opacus clips these 5.0-norm rows itself
        assert row.norm() == pytest.approx(CANARY_NORM_FACTOR * 0.5)
        assert row[canaries.coords[canary]] == pytest.approx(float(canaries.signs[canary]) * 5.0)

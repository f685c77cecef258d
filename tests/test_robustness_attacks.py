"""The attack machinery: the cascaded sweep never reports more than torchattacks run fresh, row by row, and the
tabular feature view moves only numeric features, within their training range."""

import pytest
import torch

from audit.config import RunConfig
from audit.data import load_dataset
from audit_plugins.robustness_attacks import FeatureView, attack_target, independent, pgd_update, sweep

EPS = [0.05, 0.1, 0.2, 0.3]


@pytest.mark.parametrize(
    "data_name, attack, eps_list, random_start",
    [
        ("digits", "pgd", EPS, False),
        ("digits", "pgd-l2", [0.5, 1.0, 2.0, 3.0], False),
        ("adult", "pgd", [0.1, 0.25, 0.5, 1.0], False),
        ("digits", "pgd", EPS, True),
        ("digits", "pgd-l2", [0.5, 1.0, 2.0, 3.0], True),
    ],
)
def test_sweep_never_reports_more_than_independent_torchattacks(
    tmp_path, cli, data_name, attack, eps_list, random_start
):
    out = tmp_path / "d"
    assert cli("train", "--data", data_name, "--epochs", "3", "--out", out, "-q").code == 0
    from audit.checkpoint import load_checkpoint
    from audit.models import build_model

    checkpoint = load_checkpoint(str(out / "model.pt"))
    model = build_model(checkpoint["spec"])
    model.load_state_dict(checkpoint["state_dict"])
    data = load_dataset(RunConfig(data=data_name))
    x, y = data.test.x[:300], data.test.y[:300]
    target = attack_target(model.eval(), data, x, perturb_categorical=False)
    kw = dict(
        steps=10, alpha=0.25, random_start=random_start, seed=0
    )  # a random start is drawn as torchattacks draws it
    cascade, fresh = sweep(target, y, attack, eps_list, **kw), independent(target, y, attack, eps_list, **kw)
    assert (
        fresh[eps_list[0]].any() and not fresh[eps_list[-1]].all()
    )  # the attack does something, and not everything
    # torchattacks' own verdicts on a few tabular rows flip with the batch they are attacked in (the sign step
    # amplifies float rounding of near-zero gradients); image rows agree exactly.
    slack = 0 if data_name == "digits" else int(0.02 * len(y))
    for eps in eps_list:
        assert (
            int((cascade[eps] & ~fresh[eps]).sum()) <= slack
        )  # rows torchattacks fools, the sweep fools too
        assert (
            cascade[eps].float().mean() >= fresh[eps].float().mean() - 0.02
        )  # and it is not a weaker evaluation either


def test_tabular_view_moves_only_numeric_features_within_range():
    data = load_dataset(RunConfig(sensitive=["sex"]))
    model = torch.nn.Linear(data.input_shape[0], 2)
    x = data.test.x[:64]
    target = attack_target(model, data, x, perturb_categorical=False)
    view = target.module
    assert isinstance(view, FeatureView)
    rows = torch.arange(64)
    u = target.select(rows)
    assert float(u.min()) >= 0 and float(u.max()) <= 1
    back = view.to_input(u)
    numeric = data.perturbable
    assert torch.allclose(
        back[:, numeric], x[:, numeric].clamp(data.lower[numeric], data.upper[numeric]), atol=1e-5
    )
    import torchattacks

    adv = torchattacks.PGD(view, eps=1.0, alpha=0.25, steps=5)(u, data.test.y[:64])
    target.select(rows)
    moved = view.to_input(adv)
    assert torch.equal(moved[:, ~numeric], x[:, ~numeric])  # one-hot columns untouched
    assert (moved[:, numeric] >= data.lower[numeric] - 1e-5).all() and (
        moved[:, numeric] <= data.upper[numeric] + 1e-5
    ).all()
    # epsilon in the view times the common scale is epsilon in standardised units
    eps_std = 0.1
    adv_small = torchattacks.PGD(view, eps=eps_std / view.scale, alpha=0.25 * eps_std / view.scale, steps=5)(
        u, data.test.y[:64]
    )
    target.select(rows)
    assert float((view.to_input(adv_small) - back).abs().max()) <= eps_std + 1e-4


@pytest.mark.parametrize("attack", ["pgd", "pgd-l2"])
def test_one_pgd_update_is_one_torchattacks_step(attack):
    import torchattacks

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).eval()
    images, labels = torch.rand(16, 1, 3, 4), torch.randint(0, 3, (16,))
    eps, alpha = 0.3, 0.25
    kind = torchattacks.PGDL2 if attack == "pgd-l2" else torchattacks.PGD
    expected = kind(model, eps=eps, alpha=alpha * eps, steps=1, random_start=False)(images, labels)
    point = images.clone().requires_grad_(True)
    grad = torch.autograd.grad(torch.nn.functional.cross_entropy(model(point), labels), point)[0]
    assert torch.allclose(pgd_update(attack, images, images.clone(), grad, eps, alpha), expected, atol=1e-6)

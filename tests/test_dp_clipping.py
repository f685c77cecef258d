"""One-pass per-sample clipping agrees with Opacus' GradSampleModule + DPOptimizer; other models are refused."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from audit_plugins.dp_clipping import BookKeepingClipper, supports

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _mlp(bias: bool = True) -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Linear(10, 16, bias=bias), nn.ReLU(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3, bias=bias)
    )


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("max_grad_norm", [0.05, 1.0, 100.0])
def test_clipped_sum_equals_opacus(bias, max_grad_norm):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 10, generator=gen) * 3
    y, w = torch.randint(0, 3, (64,), generator=gen), torch.rand(64, generator=gen)
    reference = _mlp(bias)
    opacus_model = GradSampleModule(reference, loss_reduction="mean")
    optimizer = DPOptimizer(
        torch.optim.SGD(reference.parameters(), lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=64,
    )
    optimizer.zero_grad()
    ((nn.functional.cross_entropy(opacus_model(x), y, reduction="none") * w).sum() / 64).backward()
    optimizer.pre_step()  # clip, accumulate, (zero) noise, divide by the expected batch size
    model = _mlp(bias)
    clipper = BookKeepingClipper(model, max_grad_norm=max_grad_norm)
    clipper.backward((nn.functional.cross_entropy(model(x), y, reduction="none") * w).sum() / 64, 64)
    for ours, theirs in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(ours.grad / 64, theirs.grad, rtol=1e-4, atol=1e-7)
    per_sample = torch.stack([g.reshape(64, -1).norm(dim=1) for g in optimizer.grad_samples], 1).norm(dim=1)
    torch.testing.assert_close(clipper.last_norms, per_sample, rtol=1e-4, atol=1e-6)
    clipped = int((per_sample > max_grad_norm).sum())
    # every sample clipped at 0.05, none at 100, some at 1.0
    assert clipped == {0.05: 64, 1.0: clipped, 100.0: 0}[max_grad_norm]
    assert max_grad_norm != 1.0 or 0 < clipped < 64


def test_an_empty_poisson_batch_gives_zero_gradients():
    model = _mlp()
    clipper = BookKeepingClipper(model, max_grad_norm=1.0)
    empty = torch.zeros(0, 10)
    loss = nn.functional.cross_entropy(model(empty), torch.zeros(0, dtype=torch.long), reduction="sum")
    clipper.backward(loss, 0)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_supports_only_linear_models_called_once_on_flat_inputs():
    assert supports(_mlp(), torch.zeros(2, 10))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert not supports(conv, torch.zeros(2, 1, 8, 8))
    assert not supports(nn.Sequential(nn.Linear(10, 4), nn.LayerNorm(4), nn.Linear(4, 2)), torch.zeros(2, 10))

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x):
            return self.layer(self.layer(x))

    assert not supports(Shared(), torch.zeros(2, 4))
    # A sequence: per-sample norms need the full ghost trick.
    assert not supports(nn.Linear(4, 2), torch.zeros(2, 3, 4))
    frozen = _mlp()
    frozen[0].requires_grad_(False)
    assert supports(frozen, torch.zeros(2, 10))
    unused = nn.ModuleDict({"a": nn.Linear(10, 2), "b": nn.Linear(10, 2)})
    unused.forward = lambda x: unused["a"](x)
    assert not supports(unused, torch.zeros(2, 10))


def test_noise_optimizer_matches_opacus_noise_and_averaging():
    from opacus.optimizers import DPOptimizerFastGradientClipping

    from audit_plugins.dp_clipping import make_noise_optimizer

    def stepped(factory, sigma):
        model = _mlp()
        optimizer = factory(
            torch.optim.SGD(model.parameters(), lr=1.0),
            noise_multiplier=sigma,
            max_grad_norm=2.0,
            expected_batch_size=50,
            loss_reduction="mean",
            generator=torch.Generator().manual_seed(3),
        )
        for p in model.parameters():
            p.grad = torch.full_like(p, 5.0)  # a clipped sum, as the clipper leaves it
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.step()
        # lr 1: the update is the gradient
        return torch.cat([(b - p.detach()).flatten() for b, p in zip(before, model.parameters())])

    ours, theirs = stepped(make_noise_optimizer, 0.0), stepped(DPOptimizerFastGradientClipping, 0.0)
    torch.testing.assert_close(ours, theirs)
    torch.testing.assert_close(ours, torch.full_like(ours, 5.0 / 50))
    noisy = stepped(make_noise_optimizer, 4.0) - 5.0 / 50
    # noise std: sigma * C / B
    assert abs(float(noisy.mean())) < 0.01 and abs(float(noisy.std()) - 4.0 * 2.0 / 50) < 0.01

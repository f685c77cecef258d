"""One-pass per-sample clipping agrees with Opacus' GradSampleModule + DPOptimizer; other models are refused."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from audit.models import SmallCNN
from audit_plugins import dp_clipping
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


def test_supports_only_covered_layers_called_once():
    assert supports(_mlp(), torch.zeros(2, 10))
    conv = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    assert supports(conv, torch.zeros(2, 1, 8, 8))
    assert supports(nn.Sequential(nn.Linear(10, 4), nn.LayerNorm(4), nn.Linear(4, 2)), torch.zeros(2, 10))

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 4)

        def forward(self, x):
            return self.layer(self.layer(x))

    assert not supports(Shared(), torch.zeros(2, 4))
    frozen = _mlp()
    frozen[0].requires_grad_(False)
    assert supports(frozen, torch.zeros(2, 10))
    unused = nn.ModuleDict({"a": nn.Linear(10, 2), "b": nn.Linear(10, 2)})
    unused.forward = lambda x: unused["a"](x)
    assert not supports(unused, torch.zeros(2, 10))


def _tail(channels: int = 4, side: int = 6) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(channels * side * side, 2)]


@pytest.mark.parametrize(
    "model, sample",
    [
        (nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"), *_tail(side=8)), (2, 1, 8, 8)),
        (nn.Sequential(nn.Conv2d(1, 4, 3, padding="same"), *_tail(side=8)), (2, 1, 8, 8)),
        (nn.Sequential(nn.Conv1d(1, 4, 3), nn.Flatten(), nn.Linear(24, 2)), (2, 1, 8)),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), *_tail()), (2, 1, 8, 8)),
        (nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 2)), None),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), *_tail()), (2, 1, 8, 8)),
        (
            nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(inplace=True), *_tail()),
            (2, 1, 8, 8),
        ),
        (nn.Sequential(type("MyLinear", (nn.Linear,), {})(10, 2)), (2, 10)),
        (nn.Sequential(nn.utils.weight_norm(nn.Linear(10, 2))), (2, 10)),
    ],
    ids=[
        "reflect",
        "same",
        "conv1d",
        "batchnorm",
        "embedding",
        "inplace-conv",
        "inplace-norm",
        "subclass",
        "wnorm",
    ],
)
def test_supports_refuses_what_it_does_not_cover(model, sample):
    x = torch.zeros(sample) if sample is not None else torch.zeros(2, 3, dtype=torch.long)
    model(x)  # the model itself runs
    assert not supports(model, x)


def test_supports_refuses_tied_weights_and_batch_not_first():
    tied = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    tied[2].weight = tied[0].weight
    assert not supports(tied, torch.zeros(2, 4))
    # a Linear on a sequence is covered; a sequence-first layout is not (the batch must come first)
    assert supports(nn.Linear(4, 2), torch.zeros(2, 3, 4))

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(4, 2)

        def forward(self, x):
            return self.layer(x.transpose(0, 1)).transpose(0, 1)

    assert not supports(SeqFirst(), torch.zeros(2, 3, 4))


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


def _digits_cnn() -> nn.Module:
    torch.manual_seed(2)
    return SmallCNN(input_shape=(1, 8, 8), num_classes=10, channels=[16, 32])


class _ConvNorms(nn.Module):
    """Stride, padding, dilation, groups, no-bias and frozen parameters, LayerNorm over (C, H, W) and over W."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.LayerNorm([8, 5, 5]),
            nn.ReLU(),
            nn.Conv2d(8, 8, (3, 2), padding=(2, 1), dilation=2, groups=4, bias=False),
            nn.GroupNorm(2, 8),
            nn.Tanh(),
            nn.Conv2d(8, 6, 1, padding="valid"),
            nn.LayerNorm(5),
        )
        self.body[6].weight.requires_grad_(False)  # a frozen weight beside a trainable bias
        self.body[7].bias.requires_grad_(False)  # and the other way round
        self.head = nn.Linear(6 * 5 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).flatten(1))


class _Sequence(nn.Module):
    """Linear and LayerNorm on (n, T, d) inputs: per-sample gradients summed over the T positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.embed, self.norm, self.head = nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8 * 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.norm(self.embed(x))).flatten(1))


MODELS = {
    "digits-cnn": (_digits_cnn, (1, 8, 8)),
    "conv-norms": (_ConvNorms, (3, 9, 9)),
    "sequence": (_Sequence, (5, 6)),
}


def _batch(shape, n=48):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, *shape, generator=gen) * 2
    return x, torch.randint(0, 3, (n,), generator=gen), torch.rand(n, generator=gen)


def _loss(model, x, y, w):
    return (nn.functional.cross_entropy(model(x), y, reduction="none") * w).sum() / len(x)


def _opacus(factory, x, y, w, max_grad_norm):
    """Opacus' per-sample norms and its clipped sum divided by the batch (GradSampleModule + DPOptimizer)."""
    reference = factory()
    optimizer = DPOptimizer(
        torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.1),
        noise_multiplier=0.0,
        max_grad_norm=max_grad_norm,
        expected_batch_size=len(x),
    )
    optimizer.zero_grad()
    _loss(GradSampleModule(reference, loss_reduction="mean"), x, y, w).backward()
    norms = torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in optimizer.grad_samples], 1).norm(dim=1)
    optimizer.pre_step()
    return norms, [p.grad for p in reference.parameters() if p.requires_grad]


@pytest.mark.parametrize("norm_rule", ["per-layer", "ghost", "materialised"])
@pytest.mark.parametrize("name", list(MODELS))
def test_conv_and_norm_clipped_sums_equal_opacus(name, norm_rule, monkeypatch):
    if norm_rule != "per-layer":  # every layer through one of the two norm computations
        monkeypatch.setattr(dp_clipping, "use_ghost_norm", lambda **_: norm_rule == "ghost")
    factory, shape = MODELS[name]
    x, y, w = _batch(shape)
    norms, _ = _opacus(factory, x, y, w, 1e6)
    max_grad_norm = float(norms.median())  # half the samples clipped
    _, theirs = _opacus(factory, x, y, w, max_grad_norm)
    model = factory()
    clipper = BookKeepingClipper(model, max_grad_norm=max_grad_norm)
    assert supports(model, x[:2])
    clipper.backward(_loss(model, x, y, w), len(x))
    ours = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    torch.testing.assert_close(clipper.last_norms, norms, rtol=1e-4, atol=1e-6)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine / len(x), reference, rtol=1e-4, atol=1e-6)
    assert 0 < int((norms > max_grad_norm).sum()) < len(x)


def test_the_digits_cnn_uses_both_norm_computations():
    # conv 1: 64 positions, 16 x 9 gradient (materialised); conv 2: 16 positions, 32 x 144 (ghost)
    assert not dp_clipping.use_ghost_norm(positions=64, out_width=16, in_width=9)
    assert dp_clipping.use_ghost_norm(positions=16, out_width=32, in_width=144)


def test_an_empty_batch_gives_zero_gradients_on_a_cnn():
    model = _digits_cnn()
    clipper = BookKeepingClipper(model, max_grad_norm=1.0)
    loss = nn.functional.cross_entropy(model(torch.zeros(0, 1, 8, 8)), torch.zeros(0, dtype=torch.long))
    clipper.backward(loss, 0)
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_an_in_place_change_after_a_layer_is_caught_at_backward():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    clipper = BookKeepingClipper(model, max_grad_norm=1.0)
    model[1].inplace = True  # after supports() would have refused it
    with pytest.raises(RuntimeError, match="in place"):
        clipper.backward(model(torch.ones(3, 4)).sum(), 3)


def test_a_layernorm_without_bias_matches_per_sample_gradients_from_torch_func():
    # Opacus' LayerNorm sampler needs a bias: the reference here is vmap over per-sample gradients
    from torch.func import functional_call, grad, vmap

    torch.manual_seed(6)
    model = nn.Sequential(
        nn.Linear(6, 8), nn.LayerNorm(8, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3)
    )
    x, y, w = _batch((5, 6))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p, xi, yi, wi):
        out = functional_call(model, p, (xi.unsqueeze(0),))
        return nn.functional.cross_entropy(out, yi.unsqueeze(0)) * wi

    per_sample = vmap(grad(one), in_dims=(None, 0, 0, 0))(params, x, y, w)
    norms = torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in per_sample.values()], 1).norm(dim=1)
    factor = (1.0 / (norms + 1e-6)).clamp(max=1.0)
    clipper = BookKeepingClipper(model, max_grad_norm=1.0)
    clipper.backward(_loss(model, x, y, w), len(x))
    torch.testing.assert_close(clipper.last_norms, norms, rtol=1e-4, atol=1e-6)
    for name, p in model.named_parameters():
        expected = torch.einsum("n,n...->...", factor, per_sample[name])
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-6)

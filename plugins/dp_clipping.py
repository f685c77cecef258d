"""Per-sample gradient clipping in one backward pass ("book-keeping" ghost clipping): Linear, Conv2d, norms.

For a Linear layer on flat inputs, sample i's weight gradient is the outer product b_i a_i^T of
the gradient at the layer's output and the layer's input, so its squared norm is
|a_i|^2 |b_i|^2 (+ |b_i|^2 for the bias) without ever forming it (Goodfellow 2015; Li et al.
2022, "ghost clipping"). Keeping a and b from the one backward pass, the sum of clipped
gradients is (c * B)^T A: one matmul per layer, where Opacus' ghost clipping runs a second
backward pass (Bu et al. 2023, "book-keeping").

A Conv2d is a Linear on the unfolded input patches U_i (T positions x C k k) per group, and a Linear
on a sequence is one on T positions: sample i's gradient is B_i^T U_i, whose squared norm is either
the "ghost" sum over T^2 position pairs <U_i U_i^T, B_i B_i^T> or the norm of the materialised
gradient, whichever costs fewer multiply-adds (Bu et al. 2023 choose per layer by 2T^2 vs p d). The
clipped sum is then one matmul over all n T positions (or the c-weighted sum of the materialised
gradients). GroupNorm and LayerNorm have closed-form per-sample gradients: the normalised input times
the output gradient (weight), and the output gradient (bias), summed over positions.

Noise, averaging and accounting stay Opacus': the optimizer is ``DPOptimizerFastGradientClipping``,
which takes the clipped sum in ``p.grad``. Models with any other trainable layer (or a covered layer
used twice, tied, or modified in place after its output) use Opacus' GradSampleModule instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def make_noise_optimizer(optimizer: torch.optim.Optimizer, **kwargs: Any) -> Any:
    """Opacus' ``DPOptimizerFastGradientClipping`` (noise, averaging, step hooks) taking the clipped sums in ``.grad``.

    Per-step costs of small models go: ``accumulate`` deep-copies every gradient (the clipper writes
    a fresh ``.grad`` each step, so the sum can take that tensor), ``add_noise`` draws each
    parameter's Gaussian noise in its own call after allocating zeros (one draw for all parameters
    has the same distribution) and ``scale_grad`` walks the parameters again to divide by the
    expected batch size (done while adding the noise). Secure-mode noise keeps Opacus' own path.
    """
    from opacus.optimizers import DPOptimizerFastGradientClipping

    class OnePassDPOptimizer(DPOptimizerFastGradientClipping):
        def accumulate(self) -> None:
            """Sum this step's clipped gradients, taking the clipper's fresh ``.grad`` instead of a copy."""
            for p in self.params:
                p.summed_grad = p.grad if p.summed_grad is None else p.summed_grad + p.grad

        def add_noise(self) -> None:
            """Add the Gaussian noise and divide by the expected batch size, in one pass."""
            if self.secure_mode:
                return super().add_noise()
            _add_noise_and_average(self)
            return None

        def scale_grad(self) -> None:
            """Opacus' division in secure mode only: otherwise ``add_noise`` has divided already."""
            if self.secure_mode:
                super().scale_grad()

    return OnePassDPOptimizer(optimizer, **kwargs)


def _add_noise_and_average(optimizer: Any) -> None:
    """One Gaussian draw for all parameters' summed gradients, then the division by the expected batch."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    std = (
        getattr(optimizer, "_adjusted_noise_multiplier", optimizer.noise_multiplier) * optimizer.max_grad_norm
    )
    sums = [p.summed_grad for p in optimizer.params]
    flat = None
    if std > 0:
        size = (sum(s.numel() for s in sums),)
        flat = torch.normal(
            0.0, std, size=size, generator=optimizer.generator, device=sums[0].device, dtype=sums[0].dtype
        )
    # scale_grad's division folded in (it becomes a no-op)
    denom = (
        optimizer.expected_batch_size * optimizer.accumulated_iterations
        if optimizer.loss_reduction == "mean"
        else 1
    )
    offset = 0
    for p, summed in zip(optimizer.params, sums):
        _check_processed_flag(summed)
        noisy = (
            summed + flat[offset : offset + summed.numel()].view_as(summed)
            if flat is not None
            else summed.clone()
        )
        p.grad = noisy.div_(denom).view_as(p)
        offset += summed.numel()
        _mark_as_processed(summed)


# Layer types the one-pass path covers: exact types, since a subclass may change what forward computes.
COVERED = (nn.Linear, nn.Conv2d, nn.GroupNorm, nn.LayerNorm)
# What one layer call contributes: each sample's squared gradient norm over the layer's trainable
# parameters, and a function from the clip factors to the clipped sums, {parameter: gradient}.
LayerPart = tuple[torch.Tensor, Callable[[torch.Tensor], dict[nn.Parameter, torch.Tensor]]]


def _trainable(p: nn.Parameter | None) -> bool:
    return p is not None and p.requires_grad


def _covered(module: nn.Module) -> bool:
    """A layer whose per-sample gradients this module computes: a covered type, weight/bias only, zero padding."""
    if type(module) not in COVERED:
        return False
    # e.g. the old weight_norm hook re-registers the weight as weight_g and weight_v
    if any(name not in ("weight", "bias") for name, _ in module.named_parameters(recurse=False)):
        return False
    return not isinstance(module, nn.Conv2d) or (module.padding_mode == "zeros" and module.padding != "same")


def trainable_layers(model: nn.Module) -> list[nn.Module] | None:
    """The covered layers holding ``model``'s trainable parameters; None when one lives elsewhere or is shared."""
    holders: dict[int, list[nn.Module]] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if p.requires_grad:
                holders.setdefault(id(p), []).append(module)
    if not holders or any(len(ms) != 1 or not _covered(ms[0]) for ms in holders.values()):
        return None
    return list(dict.fromkeys(ms[0] for ms in holders.values()))


def _input_fits(module: nn.Module, x: torch.Tensor, out: Any, rows: int) -> bool:
    """Batch-first input of the rank the layer's formulas assume, and an output tensor of the same rows."""
    if not isinstance(out, torch.Tensor) or x.shape[0] != rows or out.shape[0] != rows:
        return False
    if isinstance(module, nn.Conv2d):
        return x.dim() == 4
    if isinstance(module, nn.LayerNorm):
        return x.dim() > len(module.normalized_shape)
    return x.dim() >= 2


def supports(model: nn.Module, sample: torch.Tensor) -> bool:
    """True when every trainable parameter is in a Linear, Conv2d, GroupNorm or LayerNorm called once on ``sample``.

    The pass on ``sample`` also checks that no layer's input or output is modified in place afterwards
    (the output gradient would be taken at the wrong point) and that the batch is the first dimension.
    """
    layers = trainable_layers(model)
    if layers is None:
        return False
    calls: list[tuple[nn.Module, torch.Tensor, Any, int, int]] = []

    def record(module: nn.Module, inputs: tuple[Any, ...], out: Any) -> None:
        x = inputs[0] if inputs and isinstance(inputs[0], torch.Tensor) else None
        if x is not None and isinstance(out, torch.Tensor):
            calls.append((module, x, out, x._version, out._version))
        else:
            calls.append((module, torch.zeros(0), None, 0, 0))

    handles = [m.register_forward_hook(record) for m in layers]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()  # no dropout draws: the check must not move the seeded random stream
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    rows = len(sample)
    return (
        len(calls) == len(layers) == len({m for m, *_ in calls})
        and all(_input_fits(m, x, out, rows) for m, x, out, _, _ in calls)
        and all(x._version == vx and out._version == vo for _, x, out, vx, vo in calls)
    )


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Per-sample scale min(1, C / (norm + 1e-6)), Opacus' formula; the one-run audit's canaries use it too."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


def use_ghost_norm(*, positions: int, out_width: int, in_width: int) -> bool:
    """Ghost norm (T^2 position pairs, each 2 dot products) when cheaper than materialising the p x d gradient."""
    return 2 * positions * positions < out_width * in_width


def _flat_linear_part(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> LayerPart:
    """Linear on (n, d): |g_i|^2 = |a_i|^2 |b_i|^2 (+ |b_i|^2 for the bias); clipped sum (c B)^T A."""
    weight, bias = layer.weight, layer.bias
    b_sq = torch.linalg.vector_norm(b, dim=1).square()
    sq = torch.zeros_like(b_sq)
    if _trainable(weight):
        sq = sq + torch.linalg.vector_norm(a, dim=1).square() * b_sq
    if _trainable(bias):
        sq = sq + b_sq

    def clipped(factor: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        scaled = b * factor.unsqueeze(1)
        grads = {weight: scaled.t().mm(a)} if _trainable(weight) else {}
        if _trainable(bias):
            grads[bias] = scaled.sum(0)
        return grads

    return sq, clipped


def _weight_sq(
    rows: torch.Tensor, b: torch.Tensor, *, ghost: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Squared per-sample weight-gradient norms of a map shared over T positions, and the materialised gradients.

    ``b`` is (n, g, p, T), the output gradients per group; ``rows`` is (n, g, T, d), the inputs at each
    position, for the ghost norm (any order of the d entries: only their dot products count) and
    (n, g, d, T) in the weight's order otherwise. Sample i's gradient is B_i A_i per group.
    """
    if ghost:
        return (rows @ rows.mT).mul_(b.mT @ b).sum((1, 2, 3)), None
    per_sample = b @ rows.mT  # (n, g, p, d)
    return per_sample.square().sum((1, 2, 3)), per_sample


def _sequence_linear_part(layer: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> LayerPart:
    """Linear on (n, ..., d): the same map at T positions; sample i's weight gradient is B_i^T A_i."""
    weight, bias = layer.weight, layer.bias
    n, d, p = a.shape[0], a.shape[-1], b.shape[-1]
    a, b = a.reshape(n, -1, d), b.reshape(n, -1, p)
    ghost = use_ghost_norm(positions=a.shape[1], out_width=p, in_width=d)
    sq, per_sample = (
        _weight_sq(a.unsqueeze(1) if ghost else a.mT.unsqueeze(1), b.mT.unsqueeze(1), ghost=ghost)
        if _trainable(weight)
        else (torch.zeros(n, dtype=a.dtype, device=a.device), None)
    )
    bias_sum = b.sum(1) if _trainable(bias) else None
    if bias_sum is not None:
        sq = sq + bias_sum.square().sum(1)

    def clipped(factor: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        grads = {}
        if per_sample is not None:
            grads[weight] = (factor @ per_sample.reshape(n, -1)).view_as(weight)
        elif _trainable(weight):  # one matmul over all n T positions
            grads[weight] = (b * factor.view(n, 1, 1)).reshape(-1, p).t().mm(a.reshape(-1, d))
        if bias_sum is not None:
            grads[bias] = factor @ bias_sum
        return grads

    return sq, clipped


def _patches(layer: nn.Conv2d, a: torch.Tensor, *, rows: bool) -> torch.Tensor:
    """The input patches of each output position, per group: (n, g, T, d) if ``rows``, else (n, g, d, T).

    A strided view of the padded input, copied once (F.unfold is slower on the CPU). The rows'
    entries are in (kh, kw, channel) order, contiguous in the channels; the columns' in the weight's.
    """
    (kh, kw), (dh, dw), (sh, sw), groups = layer.kernel_size, layer.dilation, layer.stride, layer.groups
    ph, pw = (0, 0) if layer.padding == "valid" else layer.padding
    n, channels = a.shape[:2]
    height = (a.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    width = (a.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = F.pad(a, (pw, pw, ph, ph))
    if rows:
        x = x.permute(0, 2, 3, 1).contiguous()  # channels last
        bs, hs, ws, cs = x.stride()
        view = x.as_strided(
            (n, groups, height, width, kh, kw, channels // groups),
            (bs, cs * channels // groups, hs * sh, ws * sw, hs * dh, ws * dw, cs),
        )
        return view.reshape(n, groups, height * width, -1)
    bs, cs, hs, ws = x.stride()
    view = x.as_strided(
        (n, groups, channels // groups, kh, kw, height, width),
        (bs, cs * channels // groups, cs, hs * dh, ws * dw, hs * sh, ws * sw),
    )
    return view.reshape(n, groups, -1, height * width)


def _conv_part(layer: nn.Conv2d, a: torch.Tensor, b: torch.Tensor) -> LayerPart:
    """Conv2d: a Linear on the input patches, (C/g) k k wide, at the H' W' output positions."""
    weight, bias = layer.weight, layer.bias
    n, groups = a.shape[0], layer.groups
    grouped = b.reshape(n, groups, -1, b.shape[2] * b.shape[3])  # (n, g, p, T)
    _, _, p, positions = grouped.shape
    ghost = use_ghost_norm(positions=positions, out_width=p, in_width=weight[0].numel())
    sq, per_sample = (
        _weight_sq(_patches(layer, a, rows=ghost), grouped, ghost=ghost)
        if _trainable(weight)
        else (torch.zeros(n, dtype=a.dtype, device=a.device), None)
    )
    bias_sum = b.sum((2, 3)) if _trainable(bias) else None
    if bias_sum is not None:
        sq = sq + bias_sum.square().sum(1)

    def clipped(factor: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        grads = {}
        if per_sample is not None:
            grads[weight] = (factor @ per_sample.reshape(n, -1)).view_as(weight)
        elif _trainable(weight):  # the convolution's own weight gradient, of the clipped output gradients
            padding = [0, 0] if layer.padding == "valid" else list(layer.padding)
            grads[weight] = torch.ops.aten.convolution_backward(
                b * factor.view(n, 1, 1, 1),
                a,
                weight,
                None,
                list(layer.stride),
                padding,
                list(layer.dilation),
                False,
                [0, 0],
                groups,
                [False, True, False],
            )[1]
        if bias_sum is not None:
            grads[bias] = factor @ bias_sum
        return grads

    return sq, clipped


def _norm_part(layer: nn.GroupNorm | nn.LayerNorm, a: torch.Tensor, b: torch.Tensor) -> LayerPart:
    """GroupNorm/LayerNorm affine: grad w_i = sum over positions of normalised x * grad out, grad b_i = sum grad out."""
    n = a.shape[0]
    if isinstance(layer, nn.GroupNorm):
        normalised = F.group_norm(a, layer.num_groups, eps=layer.eps)
        channels = layer.num_channels

        def per_sample(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, channels, -1).sum(2)
    else:
        normalised = F.layer_norm(a, layer.normalized_shape, eps=layer.eps)
        width = layer.weight.numel() if layer.weight is not None else layer.bias.numel()

        def per_sample(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, -1, width).sum(1)

    grads = {layer.weight: per_sample(normalised * b)} if _trainable(layer.weight) else {}
    if _trainable(layer.bias):
        grads[layer.bias] = per_sample(b)
    sq = sum(g.square().sum(1) for g in grads.values())

    def clipped(factor: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        return {p: (factor @ g).reshape(p.shape) for p, g in grads.items()}

    return sq, clipped


def _layer_part(layer: nn.Module, a: torch.Tensor, b: torch.Tensor) -> LayerPart:
    if isinstance(layer, nn.Conv2d):
        return _conv_part(layer, a, b)
    if isinstance(layer, nn.Linear):
        if a.dim() == 2:
            return _flat_linear_part(layer, a, b)
        return _sequence_linear_part(layer, a, b)
    return _norm_part(layer, a, b)


class BookKeepingClipper:
    """Records each covered layer's input and output in the forward pass; ``backward`` writes clipped sums to .grad."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        layers = trainable_layers(model)
        if layers is None:
            raise ValueError("the model has trainable parameters outside the layers one-pass clipping covers")
        self.layers = layers
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor, int, int]] = []
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        self.last_norms = torch.zeros(0)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and module.training:
            self._seen.append((module, inputs[0], output, inputs[0]._version, output._version))

    def _zero(self) -> None:
        for layer in self.layers:
            for p in layer.parameters(recurse=False):
                if p.requires_grad:
                    p.grad = torch.zeros_like(p)
        self.last_norms = torch.zeros(0)

    def backward(self, loss: torch.Tensor, batch_size: int) -> None:
        """Clip each sample's gradient of ``loss * batch_size`` (``loss`` is a batch mean); store the sums in .grad."""
        seen, self._seen = self._seen, []
        if batch_size == 0 or not seen:
            self._zero()
            return
        # ``supports`` checked the model's shape; this catches a forward pass that changed since.
        if len(seen) != len(self.layers) or any(
            x._version != vx or out._version != vo for _, x, out, vx, vo in seen
        ):
            raise RuntimeError(
                f"book-keeping clipping saw {len(seen)} layer calls in one step (expected {len(self.layers)}), "
                "or a layer's input or output was modified in place"
            )
        # Only the gradients at the layers' outputs: autograd skips the (unclipped) parameter gradients.
        grads = torch.autograd.grad(
            loss * batch_size, [out for _, _, out, _, _ in seen], allow_unused=True, materialize_grads=True
        )
        with torch.no_grad():
            parts = [_layer_part(layer, x.detach(), b) for (layer, x, *_), b in zip(seen, grads)]
            norms = torch.stack([sq.float() for sq, _ in parts]).sum(0).sqrt()
            factor = clip_factors(norms, self.max_grad_norm)
            for sq, clipped in parts:
                for p, grad in clipped(factor.to(sq.dtype)).items():
                    p.grad = grad.to(p.dtype)
        self.last_norms = norms

    def remove(self) -> None:
        """Detach the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

"""Per-sample gradient clipping in one backward pass ("book-keeping" ghost clipping) for Linear-only models.

For a Linear layer on flat inputs, sample i's weight gradient is the outer product b_i a_i^T of
the gradient at the layer's output and the layer's input, so its squared norm is
|a_i|^2 |b_i|^2 (+ |b_i|^2 for the bias) without ever forming it (Goodfellow 2015; Li et al.
2022, "ghost clipping"). Keeping a and b from the one backward pass, the sum of clipped
gradients is (c * B)^T A: one matmul per layer, where Opacus' ghost clipping runs a second
backward pass (Bu et al. 2023, "book-keeping"). Noise, averaging and accounting stay Opacus':
the optimizer is ``DPOptimizerFastGradientClipping``, which takes the clipped sum in ``p.grad``.
Models with any other trainable layer use Opacus' GradSampleModule instead.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


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


def supports(model: nn.Module, sample: torch.Tensor) -> bool:
    """True when every trainable parameter is in an ``nn.Linear`` called once, on 2-D input, by a pass on ``sample``."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linear for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in owned for p in trainable):
        return False
    calls: list[tuple[nn.Module, int]] = []
    handles = [
        m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0].dim()))) for m in linear
    ]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()  # no dropout draws: the check must not move the seeded random stream
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    wanted = {m for m in linear if m.weight.requires_grad}
    used = [(m, dim) for m, dim in calls if m in wanted]
    return all(dim == 2 for _, dim in used) and len(used) == len(wanted) == len({m for m, _ in used})


def clip_factors(norms: torch.Tensor, max_grad_norm: float) -> torch.Tensor:
    """Per-sample scale min(1, C / (norm + 1e-6)), Opacus' formula; the one-run audit's canaries use it too."""
    return (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)


class BookKeepingClipper:
    """Records each Linear layer's input and output in the forward pass; ``backward`` writes clipped sums to .grad."""

    def __init__(self, model: nn.Module, *, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.layers = [m for m in model.modules() if isinstance(m, nn.Linear) and m.weight.requires_grad]
        self._seen: list[tuple[nn.Linear, torch.Tensor, torch.Tensor]] = []
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers]
        self.last_norms = torch.zeros(0)

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if torch.is_grad_enabled() and module.training:
            self._seen.append((module, inputs[0], output))

    def backward(self, loss: torch.Tensor, batch_size: int) -> None:
        """Clip each sample's gradient of ``loss * batch_size`` (``loss`` is a batch mean); store the sums in .grad."""
        seen, self._seen = self._seen, []
        if batch_size == 0 or not seen:
            for layer in self.layers:
                for p in layer.parameters(recurse=False):
                    p.grad = torch.zeros_like(p)
            self.last_norms = torch.zeros(0)
            return
        # ``supports`` checked the model's shape; this catches a forward pass that changed since.
        if len(seen) != len(self.layers):
            raise RuntimeError(
                f"book-keeping clipping saw {len(seen)} Linear calls in one step; expected {len(self.layers)}"
            )
        # Only the gradients at the layers' outputs: autograd skips the (unclipped) weight gradients.
        grads = torch.autograd.grad(loss * batch_size, [out for _, _, out in seen])
        sq_norms = torch.zeros(batch_size, device=loss.device, dtype=torch.float32)
        for (layer, a, _), b in zip(seen, grads):
            b_sq = torch.linalg.vector_norm(b, dim=1, dtype=torch.float32).square_()
            a_sq = torch.linalg.vector_norm(a.detach(), dim=1, dtype=torch.float32).square_()
            # |a|^2 |b|^2, plus |b|^2 for the bias
            sq_norms += (a_sq.add_(1.0) if layer.bias is not None else a_sq).mul_(b_sq)
        norms = sq_norms.sqrt()
        factor = clip_factors(norms, self.max_grad_norm)
        for (layer, a, _), b in zip(seen, grads):
            scaled = b * factor.to(b.dtype).unsqueeze(1)
            layer.weight.grad = scaled.t().mm(a.detach()).to(layer.weight.dtype)
            if layer.bias is not None:
                layer.bias.grad = scaled.sum(0).to(layer.bias.dtype)
        self.last_norms = norms.detach()

    def remove(self) -> None:
        """Detach the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

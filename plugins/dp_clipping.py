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

import torch
from torch import nn


def supports(model: nn.Module, sample: torch.Tensor) -> bool:
    """True when every trainable parameter is in an ``nn.Linear`` that one forward pass on ``sample`` calls once, on 2-D input."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    owned = {id(p) for m in linear for p in m.parameters(recurse=False)}
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable or any(id(p) not in owned for p in trainable):
        return False
    calls: list[tuple[nn.Module, int]] = []
    handles = [m.register_forward_hook(lambda mod, inp, out: calls.append((mod, inp[0].dim()))) for m in linear]
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


class BookKeepingClipper:
    """Records each Linear layer's input and output in the forward pass; ``backward`` writes clipped sums to ``.grad``."""

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
        """Clip each sample's gradient of ``loss * batch_size`` (a mean over the batch) and store the sums in ``.grad``."""
        seen, self._seen = self._seen, []
        if batch_size == 0 or not seen:
            for layer in self.layers:
                for p in layer.parameters(recurse=False):
                    p.grad = torch.zeros_like(p)
            self.last_norms = torch.zeros(0)
            return
        if len(seen) != len(self.layers):  # ``supports`` checked the model's shape; this catches a changed forward
            raise RuntimeError(f"book-keeping clipping saw {len(seen)} Linear calls in one step; expected {len(self.layers)}")
        # Only the gradients at the layers' outputs: autograd skips the (unclipped) weight gradients.
        grads = torch.autograd.grad(loss * batch_size, [out for _, _, out in seen])
        sq_norms = torch.zeros(batch_size, device=loss.device, dtype=torch.float32)
        for (layer, a, _), b in zip(seen, grads):
            b_sq = b.float().pow(2).sum(1)
            sq_norms += a.float().pow(2).sum(1) * b_sq + (b_sq if layer.bias is not None else 0.0)
        norms = sq_norms.sqrt()
        factor = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' own formula
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

"""Efficiency figures: throughput, memory, FLOPs, latency, model size, and post-training compression."""

from __future__ import annotations

import copy
import io
import resource
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.engine import TrainResult
from audit.models import count_parameters
from audit.report import Section, Table

SECTION_ORDER = 20  # the core's second section, after performance


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of the model's serialised state_dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


def flops_per_sample(model: nn.Module, example: torch.Tensor) -> int:
    """Forward FLOPs for one sample, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example[:1])
    model.train(was_training)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(
    model: nn.Module, batch: torch.Tensor, *, repeats: int = 30, warmup: int = 3
) -> tuple[float, float]:
    """p50 and p95 wall-clock latency of one forward pass on ``batch``, in milliseconds."""
    was_training = model.training
    model.eval()
    device = batch.device
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        model(batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    model.train(was_training)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on (x, y), on the CPU in large batches."""
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in zip(x.split(4096), y.split(4096)))
    return correct / max(len(y), 1)


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """A copy with every Linear layer dynamically quantized to int8 (CPU inference)."""
    return torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(model).cpu().eval(), {nn.Linear}, dtype=torch.qint8
    )


def prune_magnitude(model: nn.Module, amount: float = 0.5) -> tuple[nn.Module, float]:
    """A copy with the smallest ``amount`` of Linear/Conv weights zeroed (global L1), and its sparsity."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(model).cpu().eval()
    targets = [(m, "weight") for m in pruned.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    for module, name in targets:
        prune.remove(module, name)
    total = sum(m.weight.numel() for m, _ in targets)
    zeros = sum(int((m.weight == 0).sum()) for m, _ in targets)
    return pruned, zeros / max(total, 1)


def sparse_size_bytes(model: nn.Module) -> int:
    """Bytes of the state_dict with every tensor stored sparse (COO) where that is smaller."""
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point() and value.dim() >= 2:
            sparse = value.to_sparse()
            dense_bytes = value.numel() * value.element_size()
            sparse_bytes = sparse.values().numel() * value.element_size() + sparse.indices().numel() * 8
            state[key] = sparse if sparse_bytes < dense_bytes else value
        else:
            state[key] = value
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getbuffer().nbytes


def compression_rows(
    model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor, methods: list[str], *, repeats: int = 20
) -> tuple[list[list[Any]], dict[str, float]]:
    """Measure size, batch-256 latency and test accuracy before and after each compression method (CPU)."""
    base = copy.deepcopy(model).cpu().eval()
    batch = x_test[:256].cpu()
    rows, metrics = [], {}

    def measure(name: str, candidate: nn.Module, size: int) -> float:
        p50, _ = latency_ms(candidate, batch, repeats=repeats)
        acc = accuracy(candidate, x_test.cpu(), y_test.cpu())
        rows.append([name, size, round(p50, 4), round(acc, 4)])
        prefix = "efficiency" if name == "original" else f"efficiency.{name}"
        if name != "original":
            metrics.update(
                {
                    f"{prefix}.size_bytes": size,
                    f"{prefix}.latency_ms_b256_p50": p50,
                    f"{prefix}.accuracy": acc,
                }
            )
        return acc

    original_acc = measure("original", base, model_size_bytes(base))  # unrounded: the table's copy is rounded
    for method in methods:
        if method == "quantize":
            quantized = quantize_dynamic_int8(base)
            measure("quantize", quantized, model_size_bytes(quantized))
        elif method == "prune":
            pruned, sparsity = prune_magnitude(base)
            measure("prune", pruned, sparse_size_bytes(pruned))
            metrics["efficiency.prune.sparsity"] = sparsity
        metrics[f"efficiency.{method}.accuracy_drop"] = (
            original_acc - metrics[f"efficiency.{method}.accuracy"]
        )
    return rows, metrics


def efficiency_section(
    model: nn.Module, dataset: Dataset, device: torch.device, config: RunConfig, result: TrainResult | None
) -> Section:
    """Training cost, memory, size, FLOPs, latency, and compression when asked."""
    section = Section("efficiency", "Efficiency", order=SECTION_ORDER)
    model.eval()
    x_test = dataset.test.x
    if result is not None:
        section.add_metric("train_wall_s", result.wall_time_s)
        section.add_metric("train_time_s", result.train_time_s)
        section.add_metric("epoch_time_s", result.train_time_s / max(len(result.history), 1))
        section.add_metric("train_samples_per_s", result.samples_seen / max(result.train_time_s, 1e-9))
        if result.world_size > 1:  # torchrun: samples_seen counts every process's rows
            section.add_metric("world_size", result.world_size)
            per_rank = result.samples_seen / max(result.train_time_s, 1e-9) / result.world_size
            section.add_metric("train_samples_per_s_per_rank", per_rank)
        section.add_metric("epochs_run", len(result.history))
        section.add_metric("steps", result.steps)
    section.add_metric("peak_rss_mb", peak_rss_mb())
    if device.type == "cuda":
        section.add_metric("cuda_peak_mb", torch.cuda.max_memory_allocated(device) / 2**20)
    section.add_metric("params", count_parameters(model))
    section.add_metric("model_size_bytes", model_size_bytes(model))
    if len(x_test):
        section.add_metric("flops_per_sample", flops_per_sample(model, x_test[:1].to(device)))
        p50, p95 = latency_ms(model, x_test[:1].to(device))
        section.add_metric("latency_ms_p50", p50)
        section.add_metric("latency_ms_p95", p95)
        p50, p95 = latency_ms(model, x_test[:256].to(device), repeats=20)
        section.add_metric("latency_ms_b256_p50", p50)
        section.add_metric("latency_ms_b256_p95", p95)
        if config.compress:
            rows, metrics = compression_rows(model, x_test, dataset.test.y, config.compress)
            for name, value in metrics.items():
                section.metrics[name] = value
            section.tables.append(
                Table(
                    "Compression (CPU, batch 256)",
                    ["model", "size (bytes)", "latency p50 (ms)", "test accuracy"],
                    rows,
                )
            )
            section.notes.append(
                "prune: 50% of Linear/Conv weights by global magnitude; size counts sparse storage. "
                "quantize: dynamic int8 Linear layers. The compressed models' full audit (accuracy by group, "
                "fairness, robustness, membership inference) is the 'Compressed models' section."
            )
    section.notes.append(f"device {device}; latency is one forward pass, p50/p95 over repeated runs")
    section.summary = efficiency_summary(section.metrics)
    return section


def efficiency_summary(metrics: dict[str, float | None]) -> list[str]:
    """What the model costs, in words: training time and rate, memory, size and one prediction's latency."""
    m = {name.split(".", 1)[1]: value for name, value in metrics.items() if value is not None}
    parts = []
    if "train_wall_s" in m and "train_samples_per_s" in m:
        parts.append(f"training took {m['train_wall_s']:.1f} s ({m['train_samples_per_s']:,.0f} samples/s)")
    if "peak_rss_mb" in m:
        parts.append(f"peak memory {m['peak_rss_mb']:.0f} MB")
    if "params" in m and "model_size_bytes" in m:
        parts.append(f"{m['params']:,.0f} parameters ({m['model_size_bytes'] / 1024:,.0f} KiB)")
    if "latency_ms_p50" in m:
        parts.append(f"one prediction takes {m['latency_ms_p50']:.2g} ms (median)")
    text = "; ".join(parts)
    return [text[0].upper() + text[1:] + "."] if text else []

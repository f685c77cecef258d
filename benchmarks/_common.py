"""Helpers shared by the benchmark scripts."""

import platform

import torch


def device_line() -> str:
    """One line naming the machine the figures come from."""
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"device: {cpu}, {torch.get_num_threads()} torch threads, {gpu}; torch {torch.__version__}"

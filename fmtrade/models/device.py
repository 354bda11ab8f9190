"""Device and dtype resolution: ``auto`` means CUDA when present, else CPU."""

from __future__ import annotations

import torch

from fmtrade.errors import InputError


def resolve_device(device: str = "auto") -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device", f"{device!r} requested but CUDA is not available on this machine")
        return device
    raise InputError("device", f"{device!r} is not one of auto, cpu, cuda")


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto``: bfloat16 on GPUs that support it, float32 on CPU (bf16 matmuls are slow there)."""
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in table:
        raise InputError("dtype", f"{dtype!r} is not one of auto, float32, bfloat16")
    return table[dtype]

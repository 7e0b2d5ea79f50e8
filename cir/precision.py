"""Numeric precision, decided here once for every model this project trains or encodes with.

CLIP4Cir's scripts load CLIP with `clip.load(..., device="cuda")`, which gives float16 weights, then call
`.float()` before training or validating: AdamW must update float32 master weights (an update of lr 2e-6 is
below float16's resolution for most weights, and a squared gradient of 1e-3 underflows its second moment),
and index features are encoded in float32. On CUDA the forward and backward passes of training run under
autocast, with a GradScaler when the half type is float16 (bfloat16 has float32's range and needs none).

    float32(module)                     inference and validation weights (the encoders call it)
    Precision.for_device(device)        the training policy of one run: master weights, autocast, scaler

`Precision.for_device(device, half=torch.float16)` gives CUDA's policy on any device: the CPU tests run the
very code a GPU run runs.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn as nn

HALF_TYPES = (torch.float16, torch.bfloat16)


def float32(module: nn.Module) -> nn.Module:
    """`module` with float32 weights (in place), as CLIP4Cir encodes for validation and evaluation."""
    return module.float()


def cuda_half_type() -> torch.dtype:
    """bfloat16 where the GPU supports it (float32's range: no loss scaling), else float16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@dataclass
class Precision:
    """How one training run computes: float32 master weights always; on CUDA (or when `half` is given) the
    forward and backward passes under autocast to `half`, float16 with a GradScaler."""

    device_type: str                            # "cuda" or "cpu": what autocast and the scaler run on
    half: torch.dtype | None = None             # autocast type; None: float32 throughout
    scaler: torch.amp.GradScaler | None = None  # float16 only: scales the loss so small gradients survive

    @classmethod
    def for_device(cls, device: torch.device | str, half: torch.dtype | None | str = "auto") -> "Precision":
        """The policy of a run on `device`: "auto" is mixed precision on CUDA, float32 elsewhere; an explicit
        `half` (torch.float16 / torch.bfloat16) forces CUDA's policy with that type on any device (tests)."""
        device_type = torch.device(device).type
        if half == "auto":
            half = cuda_half_type() if device_type == "cuda" else None
        if half is not None and half not in HALF_TYPES:
            raise ValueError(f"half must be torch.float16 or torch.bfloat16, not {half}")
        scaler = torch.amp.GradScaler(device_type) if half == torch.float16 else None
        return cls(device_type, half, scaler)

    def master_weights(self, module: nn.Module) -> nn.Module:
        """`module` with float32 weights (in place): what the optimizer updates. Called on every model before
        its parameters are handed to an optimizer, whatever dtype it was loaded in."""
        return float32(module)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """The training forward pass (and the loss) in the half type; a no-op for float32 runs."""
        if self.half is None:
            yield
            return
        with torch.autocast(self.device_type, dtype=self.half):
            yield

    def backward_step(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        """Gradients of `loss` into the float32 weights and one optimizer step (zeroed first). With float16 the
        loss is scaled (a step whose gradients overflow is skipped and the scale lowered, as torch.amp does)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()

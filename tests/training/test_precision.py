"""Stage 1's precision: what a GPU run does, run here on CPU through the same helper (cir.precision).

`clip.load(..., device="cuda")` hands over float16 weights. Stage 1 used to give those to AdamW as they were:
an update of lr 2e-6 is below float16's resolution for most weights, and the second moment of a 1e-3
gradient (1e-6 x (1 - 0.999)) underflows to zero, so eps 1e-7 divides the first moment: updates thousands of
times too large. The policy now keeps float32 master weights and runs the passes under autocast (float16 with
a GradScaler, or bfloat16); `Precision.for_device("cpu", half=...)` is CUDA's policy on this CPU.
"""
from __future__ import annotations

import copy

import pytest
import torch

from cir.precision import Precision
from cir.training.config import TextStageConfig
from cir.training.stages import _optimizer, _unfreeze, stage1_prefixes

CAPTIONS = ["is red and longer", "has stripes", "the same but green", "no sleeves"]
STEPS = 5
LOSS_SCALE = 2e-3   # gradients of about 1e-3 (median of the non-zero ones), as fine-tuning CLIP gives


def _clip4cir_optimizer(params: list) -> torch.optim.Optimizer:
    """The optimizer stage 1 builds with the papers' preset: AdamW, lr 2e-6, eps 1e-7."""
    cfg = TextStageConfig(preset="clip4cir", dataset="catalog").with_preset(16)
    assert (cfg.optimizer, cfg.lr) == ("adamw", 2e-6)
    return _optimizer(cfg, params)


def _updates(hf_encoder, precision: Precision, loaded: torch.dtype, fixed: bool = True) -> torch.Tensor:
    """Each trained weight's change after STEPS stage-1 updates of the text side, from the tiny CLIP loaded in
    `loaded` (float16: as clip.load gives it on CUDA). `fixed=False` updates as stage 1 used to: the weights
    as loaded, no autocast, no loss scaling."""
    enc = copy.deepcopy(hf_encoder)
    enc.model.half().to(loaded)   # the same starting values (float16-exact) in every run
    if fixed:
        precision.master_weights(enc)
    params = _unfreeze(enc, stage1_prefixes(enc, "text"))
    before = [p.detach().float().clone() for p in params]
    opt = _clip4cir_optimizer(params)
    direction = torch.randn(len(CAPTIONS), enc.dim, generator=torch.Generator().manual_seed(0))
    enc.train()
    for _ in range(STEPS):
        with precision.autocast() if fixed else torch.autocast("cpu", enabled=False):
            loss = LOSS_SCALE * (enc.text_forward(CAPTIONS) * direction).sum()
        if fixed:
            precision.backward_step(opt, loss)
        else:
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.cat([(p.detach().float() - b).flatten() for p, b in zip(params, before)])


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm())


@pytest.fixture(scope="module")
def float32_updates(hf_encoder) -> torch.Tensor:
    return _updates(hf_encoder, Precision.for_device("cpu"), torch.float32)


@pytest.mark.parametrize("half, tolerance", [(torch.float16, 0.05), (torch.bfloat16, 0.2)])
def test_the_cuda_policy_updates_float16_loaded_clip_as_float32_does(hf_encoder, float32_updates, half, tolerance):
    got = _updates(hf_encoder, Precision.for_device("cpu", half=half), torch.float16)
    assert torch.isfinite(got).all()
    assert _relative_error(got, float32_updates) < tolerance
    assert float(float32_updates.abs().max()) < 10 * STEPS * 2e-6   # about lr per step: a fine-tuning's size


def test_float16_weights_updated_as_they_are_would_be_corrupted(hf_encoder, float32_updates):
    """The bug the test above catches: the updates of the old path are off by orders of magnitude."""
    got = _updates(hf_encoder, Precision.for_device("cpu"), torch.float16, fixed=False)
    assert _relative_error(got, float32_updates) > 10


def test_the_policy_by_device():
    cpu = Precision.for_device("cpu")
    assert (cpu.half, cpu.scaler) == (None, None)
    fp16 = Precision.for_device(torch.device("cpu"), half=torch.float16)
    assert fp16.half == torch.float16 and fp16.scaler is not None   # float16's range needs loss scaling
    assert Precision.for_device("cpu", half=torch.bfloat16).scaler is None
    with pytest.raises(ValueError, match="float16 or torch.bfloat16"):
        Precision.for_device("cpu", half=torch.float32)
    module = torch.nn.Linear(2, 2).half()
    assert Precision.for_device("cpu").master_weights(module).weight.dtype == torch.float32

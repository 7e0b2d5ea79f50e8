"""Image and text encoders behind one entry point: `load(name, device) -> Encoder`.

Backends:
  lite                 (lite.py) offline default: frozen EfficientNet-Lite0 (ImageNet) + the colour descriptors of
                       colour.py (the item's own pixels in CIELAB), and frozen all-MiniLM-L6-v2, each projected by
                       trained heads into one shared space (a locked-tower dual encoder; heads trained by
                       `python train.py align` (cir.training.align), shipped in weights/).
  hf:<id or dir>       (clip.py) a CLIP model through transformers (CLIPModel + its tokenizer).
  openai:<name>        (clip.py) the OpenAI `clip` package (RN50x4 was the original CLIP4Cir encoder), imported lazily.
  bof                  (bof.py) the classical image-only baseline: SIFT bag of visual words + HOG + colour and
                       edge histograms, PCA-reduced; text queries are refused (bof.TextUnsupported).

What every backend shares (the Encoder protocol, BaseEncoder, TextSide) is in base.py.

An Encoder owns its preprocessing (`encoder.preprocess`: PIL image -> tensor), so the extraction job, the
server and evaluation all prepare images the same way. Outputs are L2-normalised unless `raw=True` asks for
the model's own features (CLIP4Cir's Combiner and sum fusion take raw CLIP features; rankings normalise).
"""
from __future__ import annotations

import os

import torch

from cir.encoders import bof
from cir.encoders.base import (
    BASE_TEXT,
    IMAGE_SIDE_KEY,
    STAGE1_TEXT,
    BaseEncoder,
    CaptionEncoder,
    Encoder,
    TextCheckpointInfo,
    TextSide,
)
from cir.encoders.bof import BofEncoder, TextUnsupported, load_bof
from cir.encoders.clip import OPENAI_MODELS, HFClipEncoder, OpenAIClipEncoder
from cir.encoders.lite import LiteConfig, LiteEncoder, LiteHeads, ProjectionHead
from cir.encoders.preprocess import PREPROCESS_MODES, Preprocess
from cir.paths import WEIGHTS_DIR
from cir.utils import get_device

__all__ = [
    "BASE_TEXT", "IMAGE_SIDE_KEY", "OPENAI_MODELS", "PREPROCESS_MODES", "STAGE1_TEXT", "BaseEncoder", "BofEncoder",
    "CaptionEncoder", "Encoder", "HFClipEncoder", "LiteConfig", "LiteEncoder", "LiteHeads", "OpenAIClipEncoder",
    "Preprocess", "ProjectionHead", "TextCheckpointInfo", "TextSide", "TextUnsupported", "available_models", "bof",
    "load",
]


def available_models() -> list[str]:
    """The names `load` accepts."""
    return ["lite", "bof"] + [f"openai:{m}" for m in OPENAI_MODELS] + ["hf:<model id or local dir>"]


def load(name: str = "lite", device: str | torch.device = "auto", *, preprocess: str | None = None,
         heads: str | os.PathLike | None = None, runtime: str = "auto",
         text: "str | os.PathLike | TextSide | None" = None,
         target_ratio: float | None = None) -> "BaseEncoder | bof.BofEncoder":
    """Load an encoder by name (see `available_models()`).

    preprocess overrides the backend's default preprocessing mode (PREPROCESS_MODES: CLIP4Cir's --transform)
    and target_ratio its TargetPad ratio (default 1.25); heads points the lite encoder at other trained heads
    (default weights/lite.safetensors); runtime picks the lite image tower's CPU runtime; text picks the
    stage-1 side: "base", "stage1" or a checkpoint path from `train.py text` (its text side, and its image
    side when it holds one: BaseEncoder.with_text).
    """
    if name == "bof":  # image-only, CPU (OpenCV); heads: another fitted vocabulary/PCA file
        if preprocess is not None or target_ratio is not None:
            raise ValueError("the bof encoder has its own preprocessing (a square resize): drop --transform and "
                             "--target-ratio")
        return load_bof(heads).with_text(text)
    encoder = _load(name, device, preprocess, heads, runtime)
    if target_ratio is not None:  # set after loading: every backend builds its Preprocess with the default ratio
        encoder.preprocess = encoder.preprocess.with_mode(target_ratio=target_ratio)
    return encoder.with_text(text)


def _load(name: str, device: str | torch.device, preprocess: str | None, heads: str | os.PathLike | None,
          runtime: str) -> BaseEncoder:
    dev = get_device(device)
    if preprocess is not None and preprocess not in PREPROCESS_MODES:
        raise ValueError(f"unknown preprocessing {preprocess!r}; valid: {', '.join(PREPROCESS_MODES)}")
    if name == "lite":
        h = LiteHeads.from_file(heads or WEIGHTS_DIR / "lite.safetensors")
        if preprocess:
            h.cfg.preprocess = preprocess
        return LiteEncoder(h, dev, runtime=runtime)
    if name.startswith("hf:") and len(name) > 3:
        return HFClipEncoder(name[3:], dev, preprocess or "targetpad")
    if name.startswith("openai:") and name[7:] in OPENAI_MODELS:
        return OpenAIClipEncoder(name[7:], dev, preprocess or "targetpad")
    raise ValueError(f"unknown encoder {name!r}; valid names: {', '.join(available_models())}")

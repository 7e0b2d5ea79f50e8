"""The offline default encoder `lite`: frozen EfficientNet-Lite0 (ImageNet) + the colour descriptors
of colour.py, and frozen all-MiniLM-L6-v2, each projected by trained heads into one shared space (a
locked-tower dual encoder; heads trained by `python train.py align`, shipped in weights/)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from cir.encoders import towers
from cir.encoders.base import BaseEncoder
from cir.encoders.colour import LAB_EXTRA, hsv_histogram, lab_descriptor
from cir.encoders.preprocess import LITE_MEAN, LITE_STD, Preprocess
from cir.encoders.texts import Memo, encode_once
from cir.utils import config_from_dict, load_tensors, save_checkpoint

log = logging.getLogger(__name__)


@dataclass
class LiteConfig:
    embed_dim: int = 256            # size of the shared image/text space
    hidden_dim: int = 1024          # hidden width of each projection head
    dropout: float = 0.3            # dropout inside the heads (training only)
    image_feat_dim: int = 1280      # EfficientNet-Lite0 pooled features
    text_feat_dim: int = 384        # all-MiniLM-L6-v2 sentence embedding
    hue_bins: int = 12              # colour descriptor: hue bins for chromatic pixels
    grey_bins: int = 5              # colour descriptor: value bins for achromatic (black/grey/white) pixels
    colour: str = "hsv"             # "hsv": the HSV histogram alone (the first heads); "lab": plus the CIELAB
                                    # palette descriptor of the item's own pixels (colour.py)
    palette_size: int = 64          # "lab": colours in the learned palette (stored with the heads)
    image_size: int = 224           # EfficientNet-Lite0 input resolution
    preprocess: str = "targetpad"   # see PREPROCESS_MODES

    @property
    def colour_dim(self) -> int:
        hsv = self.hue_bins * 2 * 3 + self.grey_bins  # hue x saturation(2) x value(3) + greys
        return hsv + (self.palette_size + LAB_EXTRA if self.colour == "lab" else 0)

    @classmethod
    def from_dict(cls, d: dict) -> "LiteConfig":
        return config_from_dict(cls, d)


class ProjectionHead(nn.Module):
    """LayerNorm per input group, then a residual MLP into the shared space."""

    def __init__(self, in_dims: Sequence[int], hidden: int, out: int, dropout: float):
        super().__init__()
        self.norms = nn.ModuleList(nn.LayerNorm(d) for d in in_dims)
        d = sum(in_dims)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, out))
        self.skip = nn.Linear(d, out, bias=False)

    def forward(self, *parts: torch.Tensor) -> torch.Tensor:
        x = torch.cat([n(p.float()) for n, p in zip(self.norms, parts)], -1)
        return F.normalize(self.mlp(x) + self.skip(x), dim=-1)


class LiteHeads(nn.Module):
    """The trainable part of the lite encoder: both projection heads and the contrastive temperature."""

    def __init__(self, cfg: LiteConfig):
        super().__init__()
        self.cfg = cfg
        self.image = ProjectionHead([cfg.image_feat_dim, cfg.colour_dim], cfg.hidden_dim, cfg.embed_dim,
                                    cfg.dropout)
        self.text = ProjectionHead([cfg.text_feat_dim], cfg.hidden_dim, cfg.embed_dim, cfg.dropout)
        self.logit_scale = nn.Parameter(torch.tensor(float(np.log(1 / 0.07))))
        if cfg.colour not in ("hsv", "lab"):
            raise ValueError(f"unknown colour descriptor {cfg.colour!r}; valid: hsv, lab")
        if cfg.colour == "lab":  # learned from train pixels (colour.learn_palette); saved with the heads
            self.register_buffer("palette", torch.zeros(cfg.palette_size, 3))

    def colour_features(self, rgb: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The colour descriptor these heads take: RGB in 0..1 [B,3,H,W] -> [B, cfg.colour_dim]. `mask`
        [B,H,W] multiplies each pixel's vote (explain.py differentiates the score with respect to it)."""
        hsv = hsv_histogram(rgb, self.cfg.hue_bins, self.cfg.grey_bins, mask)
        if self.cfg.colour == "hsv":
            return hsv
        return torch.cat([hsv, lab_descriptor(rgb, self.palette.cpu(), mask=mask)], 1)

    def image_fingerprint(self) -> str:
        """A hash of the weights image features depend on (the image head and the palette, not the text
        head), computed from the weights as they are now: indexes record it, so other heads' features are
        never searched with these."""
        digest = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            if k.startswith(("image.", "palette")):
                digest.update(k.encode() + v.detach().float().cpu().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, path: str | os.PathLike) -> None:
        """safetensors weights + a JSON config beside them (same stem)."""
        # float16 on disk halves the shipped file; weights are used in float32.
        save_checkpoint(path, {k: v.half() for k, v in self.state_dict().items()}, self.cfg, "lite-heads")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "LiteHeads":
        path = Path(path)
        cfg_path = path.with_suffix(".json")
        if not path.exists() or not cfg_path.exists():
            raise FileNotFoundError(f"lite heads not found at {path} (+ {cfg_path.name}); "
                                    "train them with `python train.py align`")
        heads = cls(LiteConfig.from_dict(json.loads(cfg_path.read_text())))
        heads.load_state_dict({k: v.float() for k, v in load_tensors(path, "lite heads").items()})  # checked finite
        return heads.eval()


class LiteEncoder(BaseEncoder):
    """Locked-tower dual encoder: frozen towers, trained projection heads (which end in a normalisation)."""

    def __init__(self, heads: LiteHeads, device: torch.device, runtime: str = "auto", name: str = "lite"):
        super().__init__()
        self.name, self.cfg, self._device = name, heads.cfg, device
        self.dim = heads.cfg.embed_dim
        self.preprocess = Preprocess(heads.cfg.preprocess, heads.cfg.image_size, LITE_MEAN, LITE_STD,
                                     fill="edge")
        self.heads = heads.to(device).eval()
        self.tower = towers.ImageTower().to(device)
        self._ort = self._ort_text = None
        if runtime not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown runtime {runtime!r}; valid: auto, onnx, torch")
        self.text_model = towers.load_minilm(device)
        if device.type == "cpu" and runtime in ("auto", "onnx"):
            try:
                self._ort = towers.OrtImageTower(self.tower, heads.cfg.image_size)
                self._ort_text = towers.OrtText(self.text_model)
                self._ort_text_source = id(self.text_model)  # which MiniLM the session was exported from
            except ImportError:
                if runtime == "onnx":
                    raise
                log.warning("onnxruntime is not installed: the towers run in eager PyTorch (slower)")
        if device.type == "cuda":
            self.tower = self.tower.to(memory_format=torch.channels_last)

    @torch.inference_mode()
    def image_backbone(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen-tower features before the head: (pooled [B,1280], colour [B,colour_dim]), float32 on CPU."""
        colour = self.heads.colour_features(self.preprocess.unnormalize(pixels).cpu())
        if self._ort is not None:
            pooled = self._ort(pixels)
        else:
            x = pixels.to(self._device, non_blocking=True)
            if self._device.type == "cuda":
                with torch.autocast("cuda", dtype=torch.float16):
                    pooled = self.tower(x.contiguous(memory_format=torch.channels_last))
            else:
                pooled = self.tower(x)
        return pooled.float().cpu(), colour.cpu()

    @torch.inference_mode()
    def text_backbone(self, texts: list[str]) -> torch.Tensor:
        """Frozen MiniLM sentence embeddings [B,384], float32 on CPU."""
        if self._ort_text is not None:
            return self._ort_text(list(texts))
        return self.text_model.encode(list(texts), batch_size=128, convert_to_tensor=True,
                                      show_progress_bar=False).float().cpu()

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled, colour = self.image_backbone(pixels)
        return self.heads.image(pooled.to(self._device), colour.to(self._device)).float().cpu()

    # Stage 1's image side (`train.py text --side image|both`) is the image head: the towers stay frozen, so
    # each image's stem (pooled tower features + colour descriptor) is computed once and kept.
    stems_cacheable = True

    def image_prefixes(self) -> list[str]:
        return ["heads.image."]

    def image_stem(self, pixels: torch.Tensor) -> torch.Tensor:
        pooled, colour = self.image_backbone(pixels)
        return torch.cat([pooled, colour], 1).clone()  # clone: out of inference mode, so the head's gradient flows

    def image_forward(self, stems: torch.Tensor) -> torch.Tensor:
        stems = stems.to(self._device)
        return self.heads.image(stems[:, :self.cfg.image_feat_dim], stems[:, self.cfg.image_feat_dim:])

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.heads.text(self.text_backbone(texts).to(self._device)).float().cpu()

    def describe(self) -> dict:
        # The image weights' fingerprint too: features of other heads with the same config must not pass as these.
        return {**super().describe(), "config": asdict(self.cfg), "image_weights": self.heads.image_fingerprint()}

    def _text_side_changed(self) -> None:
        if self._ort_text is not None and id(self.text_model) != self._ort_text_source:
            self._ort_text = towers.OrtText(self.text_model)  # fine-tuned MiniLM layers: re-export
            self._ort_text_source = id(self.text_model)

    def text_prefixes(self, layers: int = 0) -> list[str]:
        n = len(self._minilm_layers())
        if not 0 <= layers <= n:
            raise ValueError(f"--layers must be between 0 and {n}")
        return ["heads.text."] + [f"text_model.0.auto_model.encoder.layer.{i}." for i in range(n - layers, n)]

    def _minilm_layers(self) -> nn.ModuleList:
        return self.text_model[0].auto_model.encoder.layer

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        if any(p.requires_grad for p in self.text_model.parameters()):
            feats = self.text_model.tokenize(list(texts))
            feats = {k: v.to(self._device) for k, v in feats.items()}
            x = self.text_model(feats)["sentence_embedding"]
        else:  # frozen tower: a constant per text, worth memoising across training epochs
            memo = self.__dict__.setdefault("_frozen_text_memo", Memo())
            # clone: rows out of inference mode, so the head's gradient can flow from them
            rows, _ = encode_once(list(texts), lambda chunk: self.text_backbone(chunk).clone(), memo, batch=None)
            x = torch.stack(rows).to(self._device)
        return self.heads.text(x)

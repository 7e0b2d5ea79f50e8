"""The Combiner of CLIP4Cir, and the one place that fuses a reference image with a relative caption.

Combiner (Baldrati et al., CVPR 2022 / TOMM 2023): image and text features are each projected
(Linear, ReLU, Dropout); their concatenation feeds a fused branch (Linear, ReLU, Dropout, Linear) and a
λ branch (Linear, ReLU, Dropout, Linear, sigmoid); output = normalize(fused + λ·text + (1−λ)·image).
This project's Combiners may add the caption's own unit text feature with a fixed weight r after that
(`text_residual`; output = normalize(output + r·unit text), trained so): a share of the ranking the caption
always decides, which the trained fusion cannot drop, so words it never saw in training still count.
Module names follow the original code, so its checkpoints ({'Combiner': state_dict}, RN50x4 sizes
640/2560/5120) load as they are, as do our own safetensors + JSON config files.

Inputs are the encoder's raw features, as in the papers (CLIP's encode_image / encode_text outputs; only the
index is normalised, at ranking time). The Combiner is not scale-invariant, so each checkpoint records what
it was trained on (`CombinerConfig.inputs`): "raw" (the papers, original checkpoints) or "normalized" (this
project's lite Combiners up to now); the module normalises its own inputs when it was trained so.

`combine(image, text, method)` is how every caller fuses raw features: combiner, sum (the zero-shot
element-wise-sum baseline, normalize(image + text)), image or text alone.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from cir.encoders import CaptionEncoder, Encoder, TextSide
from cir.paths import WEIGHTS_DIR
from cir.utils import check_finite, config_from_dict, load_tensors, save_checkpoint

COMBINE_METHODS = ("combiner", "sum", "image", "text")
# Shipped checkpoints, by the short names the CLIs and the server accept.
# The first is the demo's default composed mode: the best on the catalogue's val triplets (docs/benchmarks.md).
SHIPPED_COMBINERS = {"combiner": WEIGHTS_DIR / "combiner.safetensors",
                     "combiner-stage1": WEIGHTS_DIR / "combiner-stage1.safetensors"}


@dataclass
class CombinerConfig:
    feature_dim: int = 256         # encoder output size (640 for CLIP RN50x4)
    projection_dim: int = 1024     # size of each projected feature (2560 = 4x640 in the paper)
    hidden_dim: int = 2048         # fused and λ branches' hidden size (5120 = 8x640 in the paper)
    dropout: float = 0.5           # dropout everywhere, as the paper
    logit_scale: float = 100.0     # fixed temperature of the classification loss
    encoder: str = ""              # encoder whose features it was trained on ("" = unknown, e.g. original .pt)
    text_encoder: str = "base"     # text side it was trained with: "base", a stage-1 checkpoint's file name in
                                   # weights/ or its path (TextSide.record); compare `text_side`, not this
    inputs: str = "raw"            # features it takes: "raw" (the papers) or "normalized" (L2-normalised first)
    text_residual: float = 0.0     # weight of the caption's own unit text feature added to the fused output, i.e. of
                                   # its text score in the ranking: 0 is CLIP4Cir's Combiner; > 0 keeps what the
                                   # caption says even where the trained fusion never learnt its words

    @classmethod
    def from_dict(cls, d: dict) -> "CombinerConfig":
        return config_from_dict(cls, d)

    @property
    def text_side(self) -> TextSide:
        """The text side this Combiner was trained with, resolved (encoders.TextSide decides the pairing)."""
        return TextSide.of(self.text_encoder)

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "CombinerConfig":
        """Infer the sizes from the weights, as openai/CLIP does for its models."""
        proj, feat = sd["text_projection_layer.weight"].shape
        hidden = sd["combiner_layer.weight"].shape[0]
        return cls(feature_dim=feat, projection_dim=proj, hidden_dim=hidden, inputs="raw")


COMBINER_INPUTS = ("raw", "normalized")


def check_compatible(cfg: CombinerConfig, encoder: Encoder) -> None:
    """A Combiner only makes sense on the features it was trained on: ValueError saying which do not fit.
    Callers decide what a misfit means (evaluation fails; the demo skips that checkpoint with a warning)."""
    if cfg.encoder and cfg.encoder != encoder.name:
        raise ValueError(f"the combiner was trained on {cfg.encoder!r} features, not {encoder.name!r}; use it with "
                         f"--encoder {cfg.encoder}")
    if cfg.feature_dim != encoder.dim:
        raise ValueError(f"the combiner expects {cfg.feature_dim}-d features, {encoder.name} gives {encoder.dim}-d")


class Combiner(nn.Module):
    def __init__(self, cfg: CombinerConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or CombinerConfig()
        if cfg.inputs not in COMBINER_INPUTS:
            raise ValueError(f"unknown Combiner inputs {cfg.inputs!r}; valid: {', '.join(COMBINER_INPUTS)}")
        self.text_projection_layer = nn.Linear(cfg.feature_dim, cfg.projection_dim)
        self.image_projection_layer = nn.Linear(cfg.feature_dim, cfg.projection_dim)
        self.dropout1 = nn.Dropout(cfg.dropout)
        self.dropout2 = nn.Dropout(cfg.dropout)
        self.combiner_layer = nn.Linear(cfg.projection_dim * 2, cfg.hidden_dim)
        self.output_layer = nn.Linear(cfg.hidden_dim, cfg.feature_dim)
        self.dropout3 = nn.Dropout(cfg.dropout)
        self.dynamic_scalar = nn.Sequential(
            nn.Linear(cfg.projection_dim * 2, cfg.hidden_dim), nn.ReLU(), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.hidden_dim, 1), nn.Sigmoid())
        self.logit_scale = cfg.logit_scale

    def _joint(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        t = self.dropout1(F.relu(self.text_projection_layer(text)))
        i = self.dropout2(F.relu(self.image_projection_layer(image)))
        return torch.cat((t, i), -1)  # text first, as the original (its weights depend on the order)

    def mixing_weight(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """λ in (0, 1) per pair, [B, 1]: how much of the output comes from the text side."""
        return self.dynamic_scalar(self._joint(image, text))

    def combine_features(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Fused query features [B, feature_dim], L2-normalised, from raw image and text features."""
        image, text = image.float(), text.float()
        if self.cfg.inputs == "normalized":
            image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        joint = self._joint(image, text)
        fused = self.output_layer(self.dropout3(F.relu(self.combiner_layer(joint))))
        lam = self.dynamic_scalar(joint)
        out = F.normalize(fused + lam * text + (1 - lam) * image, dim=-1)
        if self.cfg.text_residual:  # trained with it: the fusion learns what to add to the caption's own score
            out = F.normalize(out + self.cfg.text_residual * F.normalize(text, dim=-1), dim=-1)
        return out

    def forward(self, image: torch.Tensor, text: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Logits of each fused query against each target (the papers' batch-based classification)."""
        return self.logit_scale * self.combine_features(image, text) @ F.normalize(target.float(), dim=-1).T

    def save(self, path: str | os.PathLike, dtype: torch.dtype = torch.float16) -> None:
        """safetensors weights + the JSON config beside them; float16 by default (half the size, no measurable
        loss), float32 for exactly the trained numbers. load reads either."""
        save_checkpoint(path, {k: v.to(dtype) for k, v in self.state_dict().items()}, self.cfg, "combiner")

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu") -> "Combiner":
        """Load our safetensors (+ .json) or an original CLIP4Cir checkpoint (.pt/.pth).

        FileNotFoundError when it is missing; ValueError naming the file for anything else wrong with it: not a
        regular file, truncated or garbage weights, NaN or infinite values, a config that is not JSON or does
        not fit the weights.
        """
        path = Path(path)
        if path.suffix == ".safetensors":
            sd = load_tensors(path, "combiner checkpoint")   # checked finite
            cfg = _config_beside(path, sd)
        else:
            sd = _clip4cir_state(path, map_location)
            check_finite(sd, f"combiner checkpoint {path}")
            cfg = _config_from_weights(path, sd)
        try:
            model = cls(cfg)
            model.load_state_dict({k: v.float() for k, v in sd.items()})
        except (RuntimeError, ValueError, TypeError) as e:   # missing keys, other shapes, a bad `inputs` or size
            raise ValueError(f"combiner checkpoint {path} does not fit its config: {str(e).splitlines()[0]}") from None
        return model.eval()


def _config_from_weights(path: Path, sd: dict[str, torch.Tensor]) -> CombinerConfig:
    try:
        return CombinerConfig.from_state_dict(sd)
    except (KeyError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not a Combiner checkpoint: it lacks {e}") from None


def _config_beside(path: Path, sd: dict[str, torch.Tensor]) -> CombinerConfig:
    """The JSON config beside a safetensors checkpoint, else the sizes read off its weights."""
    cfg_file = path.with_suffix(".json")
    if not cfg_file.exists():
        return _config_from_weights(path, sd)
    try:
        d = json.loads(cfg_file.read_text())
        # Checkpoints written before `inputs` existed were all trained on normalised features.
        return CombinerConfig.from_dict({"inputs": "normalized", **d})
    except (OSError, ValueError, TypeError) as e:   # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"combiner config {cfg_file} is damaged: {type(e).__name__}: {e}") from None


def _clip4cir_state(path: Path, map_location: str | torch.device) -> dict[str, torch.Tensor]:
    """The Combiner state dict of an original CLIP4Cir checkpoint ({'Combiner': state_dict} or the dict)."""
    if not path.exists():
        raise FileNotFoundError(f"combiner checkpoint {path} not found")
    if not path.is_file():
        raise ValueError(f"combiner checkpoint {path} is not a regular file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 -- unpickling hostile bytes raises anything (IndexError for a text file)
        raise ValueError(f"{path} is not a Combiner checkpoint: it cannot be read by torch.load "
                         f"({type(e).__name__})") from None
    sd = obj.get("Combiner", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or "text_projection_layer.weight" not in sd:
        raise ValueError(f"{path} is not a Combiner checkpoint (expected a state dict, or a dict "
                         "whose 'Combiner' entry is one, as CLIP4Cir saves)")
    if not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a Combiner checkpoint: its state dict holds other things than tensors")
    return sd


def combine(image: torch.Tensor, text: torch.Tensor, method: str = "combiner",
            combiner: Combiner | None = None) -> torch.Tensor:
    """Fuse raw reference-image and caption features into L2-normalised query features, by method name.

    Inference only: a Combiner passed here should be in eval mode (Combiner.load returns it so).
    """
    if method not in COMBINE_METHODS:
        raise ValueError(f"unknown combine method {method!r}; valid: {', '.join(COMBINE_METHODS)}")
    if method == "combiner":
        if combiner is None:
            raise ValueError("method 'combiner' needs a trained Combiner")
        with torch.no_grad():
            return combiner.combine_features(image, text)
    if method == "sum":
        return element_wise_sum(image, text)
    return F.normalize((image if method == "image" else text).float(), dim=-1)


def element_wise_sum(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """The papers' zero-shot baseline and stage-1 fusion: normalize(image + text) on raw features."""
    return F.normalize(image.float() + text.float(), dim=-1)


def load_method(spec: str, map_location: str | torch.device = "cpu") -> tuple[str, Combiner | None]:
    """A fusion choice by name: sum | image | text | combiner | combiner-stage1 | a checkpoint path.

    Returns (method for `combine`, the loaded Combiner or None).
    """
    if spec in ("sum", "image", "text"):
        return spec, None
    path = SHIPPED_COMBINERS.get(spec, Path(spec))
    if spec not in SHIPPED_COMBINERS and not path.exists():
        raise ValueError(f"unknown combiner {spec!r}: give sum, image, text, "
                         f"{', '.join(SHIPPED_COMBINERS)} or a checkpoint path")
    return "combiner", Combiner.load(path, map_location)


def compose(encoder: CaptionEncoder, image_feats: torch.Tensor | None, captions: list[str] | None, method: str,
            combiner: Combiner | None = None) -> torch.Tensor:
    """Query features for raw reference-image features [B,d] and relative captions, by fusion method.

    The single path from (reference, caption) to a query vector, shared by evaluate.py and the server.
    `image_feats` are the encoder's raw features (FeatureIndex.raw); captions are encoded raw here, so every
    method gets exactly the input it was defined or trained on. `image` needs no captions, `text` no image.
    """
    if method == "image":
        if image_feats is None:
            raise ValueError("method 'image' needs reference image features")
        return F.normalize(image_feats.float(), dim=-1)
    text = encoder.encode_texts(captions or [], raw=True)
    if method == "text":
        return F.normalize(text, dim=-1)
    if image_feats is None or len(image_feats) != len(text):
        raise ValueError("need one reference image per caption")
    return combine(image_feats, text, method, combiner)

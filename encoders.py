"""Image and text encoders behind one entry point: `load(name, device) -> Encoder`.

Backends:
  lite                 offline default: frozen EfficientNet-Lite0 (ImageNet) + the colour descriptors of colour.py
                       (the item's own pixels in CIELAB), and frozen all-MiniLM-L6-v2, each projected by trained
                       heads into one shared space (a locked-tower dual encoder; heads trained by
                       `python train.py align` (train_align.py), shipped in weights/).
  hf:<id or dir>       a CLIP model through transformers (CLIPModel + its tokenizer).
  openai:<name>        the OpenAI `clip` package (RN50x4 was the original CLIP4Cir encoder), imported lazily.
  bof                  the classical image-only baseline (bof.py): SIFT bag of visual words + HOG + colour and
                       edge histograms, PCA-reduced; text queries are refused (bof.TextUnsupported).

An Encoder owns its preprocessing (`encoder.preprocess`: PIL image -> tensor), so the extraction job, the
server and evaluation all prepare images the same way. Outputs are L2-normalised unless `raw=True` asks for
the model's own features (CLIP4Cir's Combiner and sum fusion take raw CLIP features; rankings normalise).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

import bof
import towers
from colour import LAB_EXTRA, hsv_histogram, lab_descriptor
from preprocess import CLIP_MEAN, CLIP_STD, LITE_MEAN, LITE_STD, PREPROCESS_MODES, Preprocess
from utils import WEIGHTS_DIR, config_from_dict, get_device, save_checkpoint

log = logging.getLogger(__name__)

OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")


STAGE1_TEXT = WEIGHTS_DIR / "lite-text.safetensors"   # the shipped stage-1 text side ("stage1")


def available_models() -> list[str]:
    """The names `load` accepts."""
    return ["lite", "bof"] + [f"openai:{m}" for m in OPENAI_MODELS] + ["hf:<model id or local dir>"]


# ----------------------------------------------------------------------------------------------- text sides

@dataclass(frozen=True)
class TextSide:
    """Which text side an encoder runs, resolved once: the backend's own ("base") or a stage-1 checkpoint.

    The one place that decides which text side goes with which Combiner: a Combiner records the side it was
    trained with (CombinerConfig.text_encoder: "base", "stage1", a file name in weights/ or a path), an encoder
    knows the side it runs (`encoder.text_side`), and the server, evaluate.py and train.py compare these values,
    never the strings: "stage1", "lite-text.safetensors" and the shipped file's full path are one side.
    """

    path: Path | None = None        # the checkpoint, absolute (symlinks resolved); None: base

    @classmethod
    def of(cls, choice: "str | os.PathLike | TextSide | None") -> "TextSide":
        """"base" (or None / ""), "stage1" (the shipped checkpoint), a bare file name in weights/, or a path."""
        if isinstance(choice, TextSide):
            return choice
        if choice is None or str(choice) in ("", "base"):
            return cls(None)
        text = str(choice)
        if text == "stage1":
            path = STAGE1_TEXT
        elif not Path(text).expanduser().exists() and (WEIGHTS_DIR / text).exists():  # a shipped file's name
            path = WEIGHTS_DIR / text
        else:
            path = Path(text).expanduser()
        return cls(path.resolve())

    @property
    def is_base(self) -> bool:
        return self.path is None

    @property
    def name(self) -> str:
        """A short label: base, stage1 (the shipped checkpoint) or the checkpoint's file stem."""
        if self.path is None:
            return "base"
        return "stage1" if self.path == STAGE1_TEXT.resolve() else self.path.stem

    @property
    def record(self) -> str:
        """What a Combiner config or a metrics line stores: base, a file name in weights/, else the path."""
        if self.path is None:
            return "base"
        return self.path.name if self.path.parent == WEIGHTS_DIR.resolve() else str(self.path)

    def exists(self) -> bool:
        return self.path is None or self.path.exists()


BASE_TEXT = TextSide(None)


# ----------------------------------------------------------------------------------------------- interfaces

class CaptionEncoder(Protocol):
    """What turns captions into features: an Encoder, or the server's cached and timed TimedTexts."""

    dim: int

    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor: ...


class Encoder(CaptionEncoder, Protocol):
    """What callers of an encoder use (the `encoder` parameters across the project); BaseEncoder implements it.

    Tests pass small stand-ins with only the members the code under test touches.
    """

    name: str
    preprocess: Preprocess

    @property
    def text_side(self) -> TextSide: ...

    def encode_images(self, images: Sequence[Image.Image], raw: bool = False) -> torch.Tensor: ...

    def encode_pixels(self, pixels: torch.Tensor, raw: bool = False) -> torch.Tensor: ...

    def describe(self) -> dict: ...

    def with_text(self, side: "str | os.PathLike | TextSide | None") -> "Encoder": ...


# ----------------------------------------------------------------------------------------------- base class

class BaseEncoder(nn.Module):
    """The encoders' common code. Subclasses set name, dim, preprocess and implement _image_features and
    _encode_texts."""

    name: str
    dim: int
    preprocess: Preprocess

    @property
    def device(self) -> torch.device:
        return self._device

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Preprocessed batch [B,3,S,S] -> the model's raw image features [B,dim] (float32, on CPU)."""
        raise NotImplementedError

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Stripped, non-empty strings -> the model's raw text features [B,dim] (float32, on CPU)."""
        raise NotImplementedError

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor, raw: bool = False) -> torch.Tensor:
        """Preprocessed batch [B,3,S,S] -> features [B,dim]: L2-normalised, or as the model outputs them
        (`raw`: CLIP's encode_image, what CLIP4Cir's Combiner and sum fusion take)."""
        f = self._image_features(pixels).float().cpu()
        return f if raw else F.normalize(f, dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: Sequence[Image.Image], raw: bool = False) -> torch.Tensor:
        """PIL images -> features [B,dim], L2-normalised unless `raw`."""
        if len(images) == 0:
            return torch.zeros(0, self.dim)
        return self.encode_pixels(torch.stack([self.preprocess(im) for im in images]), raw=raw)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], raw: bool = False) -> torch.Tensor:
        """Strings -> features [B,dim], L2-normalised unless `raw`. Empty or blank strings are refused."""
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"text {i} is empty: give a non-empty caption")
        if not texts:
            return torch.zeros(0, self.dim)
        f = self._encode_texts([t.strip() for t in texts]).float().cpu()
        return f if raw else F.normalize(f, dim=-1)

    def describe(self) -> dict:
        """What a feature file needs to record about the encoder that made it."""
        return {"encoder": self.name, "dim": self.dim, "preprocess": self.preprocess.describe()}

    # -- the text side, for stage-1 fine-tuning (train.py text) and selecting its checkpoints

    text_side: TextSide = TextSide(None)   # which text side is loaded, resolved once (with_text sets it)

    @property
    def text_checkpoint(self) -> str:
        """"base", or the loaded stage-1 checkpoint's resolved path."""
        return "base" if self.text_side.path is None else str(self.text_side.path)

    def text_prefixes(self, layers: int = 0) -> list[str]:
        """State-dict prefixes of what stage 1 fine-tunes: the text head / encoder (+ its top `layers`)."""
        raise NotImplementedError(f"{self.name} does not support text fine-tuning")

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        """Raw text features like encode_texts(raw=True), but differentiable (training), on the encoder's device."""
        raise NotImplementedError(f"{self.name} does not support text fine-tuning")

    def save_text(self, path: str | os.PathLike, prefixes: Sequence[str], info: dict | None = None) -> None:
        """Write the text-side weights under `prefixes` as a stage-1 checkpoint (safetensors + JSON)."""
        sd = {k: v.half() for k, v in self.state_dict().items() if k.startswith(tuple(prefixes))}
        save_checkpoint(path, sd, TextCheckpointInfo(self.name, list(prefixes), info or {}), "text-encoder")

    def with_text(self, side: "str | os.PathLike | TextSide | None") -> "BaseEncoder":
        """This encoder with the text side `side` (TextSide.of: "base"/None leaves it unchanged, "stage1" or a
        stage-1 checkpoint path). A `.pt` / `.pth` path is a CLIP fine-tuned by CLIP4Cir ({'CLIP': state_dict},
        openai: encoders): its text side is taken. The image side is shared, not copied: image features (and
        extracted indexes) stay valid.
        """
        side = TextSide.of(side)
        if side.path is None:
            return self
        path = side.path
        sd = self._clip4cir_text(path) if path.suffix in (".pt", ".pth") else self._text_checkpoint(path)
        own = self.state_dict()
        bad = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
        if bad:
            raise ValueError(f"text checkpoint {path} does not fit {self.name}: {bad[:3]} ...")
        new = copy.copy(self)
        new._modules = dict(self._modules)  # copy only the top-level modules the checkpoint changes
        for top in {k.split(".")[0] for k in sd}:
            new._modules[top] = copy.deepcopy(self._modules[top])
        new.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=False)
        new.text_side = side
        new._text_side_changed()
        return new.eval()

    def _text_checkpoint(self, path: Path) -> dict[str, torch.Tensor]:
        """The weights of one of our stage-1 checkpoints (safetensors + JSON), checked to be this encoder's."""
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise FileNotFoundError(f"text checkpoint {path} (+ {meta_path.name}) not found; "
                                    "make one with `python train.py text` or use 'base'")
        meta = config_from_dict(TextCheckpointInfo, json.loads(meta_path.read_text()))
        if meta.encoder != self.name:
            raise ValueError(f"text checkpoint {path} was trained for encoder {meta.encoder!r}, not {self.name!r}")
        return load_file(path)

    def _clip4cir_text(self, path: Path) -> dict[str, torch.Tensor]:
        """The text side of a CLIP fine-tuned by CLIP4Cir's scripts ({'CLIP': state_dict} of an OpenAI CLIP);
        its image tower ('visual.*') is left out, so extracted indexes stay valid."""
        if not path.exists():
            raise FileNotFoundError(f"text checkpoint {path} not found")
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, dict) or not isinstance(obj.get("CLIP"), dict):
            raise ValueError(f"{path} is not a CLIP4Cir fine-tuned CLIP (a dict whose 'CLIP' entry is the state dict)")
        if not self.name.startswith("openai:"):
            raise ValueError(f"{path} holds OpenAI CLIP weights (as CLIP4Cir saves them): use it with an openai: "
                             f"encoder, not {self.name}")
        return {f"model.{k}": v for k, v in obj["CLIP"].items() if not k.startswith("visual.")}

    def _text_side_changed(self) -> None:
        """Hook for backends that compile the text tower (lite's ONNX session must follow new weights)."""


@dataclass
class TextCheckpointInfo:
    encoder: str                    # the encoder name the checkpoint belongs to (lite, hf:..., openai:...)
    prefixes: list[str]             # state-dict prefixes it replaces
    info: dict                      # training summary (triplets, epochs, validation metrics)


# ----------------------------------------------------------------------------------------------- lite

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
        heads.load_state_dict({k: v.float() for k, v in load_file(path).items()})
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
            memo = self.__dict__.setdefault("_frozen_text_memo", {})
            missing = [t for t in dict.fromkeys(texts) if t not in memo]
            if missing:
                memo.update(zip(missing, self.text_backbone(missing).clone()))  # clone leaves inference mode
            x = torch.stack([memo[t] for t in texts]).to(self._device)
        return self.heads.text(x)


# ----------------------------------------------------------------------------------------------- CLIP backends

class HFClipEncoder(BaseEncoder):
    """A CLIP model through transformers: any hub id (needs internet once) or a local folder."""

    def __init__(self, model_id: str, device: torch.device, preprocess: str = "targetpad"):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel  # lazily: heavy, and only this backend needs it
        self.name, self._device = f"hf:{model_id}", device
        self.model = CLIPModel.from_pretrained(model_id).to(device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_id)
        self.dim = self.model.config.projection_dim
        mean, std = CLIP_MEAN, CLIP_STD
        pp_file = Path(model_id) / "preprocessor_config.json"
        if pp_file.exists():
            pp = json.loads(pp_file.read_text())
            mean, std = pp.get("image_mean", mean), pp.get("image_std", std)
        self.preprocess = Preprocess(preprocess, self.model.config.vision_config.image_size, mean, std)
        self.max_len = self.model.config.text_config.max_position_embeddings

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers < 5 returns the projected tensor, >= 5 an output object holding it.
        return out if torch.is_tensor(out) else out.pooler_output

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self._device.type, enabled=self._device.type == "cuda"):
            f = self._pooled(self.model.get_image_features(pixel_values=pixels.to(self._device)))
        return f.float()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt").to(self._device)
        with torch.autocast(self._device.type, enabled=self._device.type == "cuda"):
            f = self._pooled(self.model.get_text_features(input_ids=tok["input_ids"],
                                                          attention_mask=tok["attention_mask"]))
        return f.float()

    def text_prefixes(self, layers: int = 0) -> list[str]:
        if layers <= 0:  # the whole text tower, as CLIP4Cir's stage 1
            return ["model.text_model.", "model.text_projection."]
        n = self.model.config.text_config.num_hidden_layers
        return (["model.text_model.final_layer_norm.", "model.text_projection."]
                + [f"model.text_model.encoder.layers.{i}." for i in range(max(0, n - layers), n)])

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_len,
                             return_tensors="pt").to(self._device)
        f = self._pooled(self.model.get_text_features(input_ids=tok["input_ids"],
                                                      attention_mask=tok["attention_mask"]))
        return f.float()


class OpenAIClipEncoder(BaseEncoder):
    """The OpenAI `clip` package (downloads weights on first use; needs torchvision)."""

    def __init__(self, model_name: str, device: torch.device, preprocess: str = "targetpad"):
        super().__init__()
        try:
            import clip  # lazily: it imports torchvision, which may not be installable
        except Exception as e:  # ImportError, or torchvision's operator errors on a mismatched build
            raise ImportError(f"the openai backend needs the `clip` package and torchvision: {e}") from e
        self.name, self._device = f"openai:{model_name}", device
        self._clip = clip
        self.model, _ = clip.load(model_name, device=device, jit=False)
        self.model.eval()
        self.dim = self.model.text_projection.shape[1]
        self.preprocess = Preprocess(preprocess, self.model.visual.input_resolution, CLIP_MEAN, CLIP_STD)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels.to(self._device, self.model.dtype)).float()

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        tokens = self._clip.tokenize(texts, truncate=True).to(self._device)
        return self.model.encode_text(tokens).float()

    def text_prefixes(self, layers: int = 0) -> list[str]:
        return ["model.token_embedding.", "model.positional_embedding", "model.transformer.", "model.ln_final.",
                "model.text_projection"]

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self._clip.tokenize(list(texts), truncate=True).to(self._device)
        return self.model.encode_text(tokens).float()


# ----------------------------------------------------------------------------------------------- entry point

def load(name: str = "lite", device: str | torch.device = "auto", *, preprocess: str | None = None,
         heads: str | os.PathLike | None = None, runtime: str = "auto",
         text: "str | os.PathLike | TextSide | None" = None) -> "BaseEncoder | bof.BofEncoder":
    """Load an encoder by name (see `available_models()`).

    preprocess overrides the backend's default preprocessing mode; heads points the lite encoder at other
    trained heads (default weights/lite.safetensors); runtime picks the lite image tower's CPU runtime;
    text picks the text side: "base", "stage1" or a checkpoint path from `train.py text`.
    """
    if name == "bof":  # image-only, CPU (OpenCV); heads: another fitted vocabulary/PCA file
        if preprocess is not None:
            raise ValueError("the bof encoder has its own preprocessing (a square resize): drop --preprocess")
        return bof.load_bof(heads).with_text(text)
    return _load(name, device, preprocess, heads, runtime).with_text(text)


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

"""What every encoder shares: the Encoder protocol its callers use, BaseEncoder (normalised or raw
features, the text and image sides of stage-1 fine-tuning) and TextSide, the one rule that says which stage-1
side goes with which Combiner."""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from cir.encoders.preprocess import Preprocess
from cir.paths import WEIGHTS_DIR
from cir.utils import check_finite, config_from_dict, load_tensors, save_checkpoint

log = logging.getLogger(__name__)


STAGE1_TEXT = WEIGHTS_DIR / "lite-text.safetensors"   # the shipped stage-1 checkpoint ("stage1")
IMAGE_SIDE_KEY = "image_side"   # describe()'s key naming a fine-tuned image side; absent: the backend's own


@dataclass(frozen=True)
class TextSide:
    """Which stage-1 side an encoder runs, resolved once: the backend's own ("base") or a stage-1 checkpoint of
    `train.py text`, which holds the text side, the image side (`--side image`) or both (`--side both`).

    The one place that decides which stage-1 side goes with which Combiner: a Combiner records the side it was
    trained with (CombinerConfig.text_encoder: "base", "stage1", a file name in weights/ or a path), an encoder
    knows the side it runs (`encoder.text_side`), and the server, evaluate.py and train.py compare these values,
    never the strings: "stage1", "lite-text.safetensors" and the shipped file's full path are one side. The
    name stays "text side" (the flags `--text-encoder`, the server's `text_encoder`): a checkpoint's image
    tower, when it has one, comes with it, and what that changes for indexes is `BaseEncoder.image_digest`.
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


class CaptionEncoder(Protocol):
    """What turns captions into features: an Encoder, or one behind the cache of encoders.texts.CachedTexts."""

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
        """What a feature file needs to record about the encoder that made it: with a fine-tuned image side, its
        digest (IMAGE_SIDE_KEY), so that indexes of another image tower are refused or extracted again. Left out
        for the backend's own image side: the indexes extracted before this key existed stay valid."""
        out = {"encoder": self.name, "dim": self.dim, "preprocess": self.preprocess.describe()}
        return {**out, IMAGE_SIDE_KEY: self.image_digest} if self.image_digest else out

    # -- the stage-1 sides (train.py text) and selecting their checkpoints

    text_side: TextSide = TextSide(None)   # which stage-1 checkpoint is loaded, resolved once (with_text sets it)
    image_digest: str | None = None        # hash of the image weights a stage-1 checkpoint replaced; None: own
    stems_cacheable: bool = False          # image_stem rows are small enough to keep per image (lite's, not
                                           # CLIP's: its stems are the pixels)

    def image_prefixes(self) -> list[str]:
        """State-dict prefixes of the image side stage 1 fine-tunes (`--side image|both`)."""
        raise NotImplementedError(f"{self.name} does not support image fine-tuning")

    def image_stem(self, pixels: torch.Tensor) -> torch.Tensor:
        """The frozen part of the image side on a preprocessed batch [B,3,S,S]: image_forward's input. CLIP
        fine-tunes its whole image tower, so its stems are the pixels themselves."""
        return pixels

    def image_forward(self, stems: torch.Tensor) -> torch.Tensor:
        """Raw image features like encode_pixels(raw=True) from image_stem's rows, but differentiable
        (training), on the encoder's device."""
        raise NotImplementedError(f"{self.name} does not support image fine-tuning")

    def text_prefixes(self, layers: int = 0) -> list[str]:
        """State-dict prefixes of what stage 1 fine-tunes: the text head / encoder (+ its top `layers`)."""
        raise NotImplementedError(f"{self.name} does not support text fine-tuning")

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        """Raw text features like encode_texts(raw=True), but differentiable (training), on the encoder's device."""
        raise NotImplementedError(f"{self.name} does not support text fine-tuning")

    def save_text(self, path: str | os.PathLike, prefixes: Sequence[str], info: dict | None = None) -> None:
        """Write the weights under `prefixes` (text side, image side or both) as a stage-1 checkpoint
        (safetensors + JSON)."""
        sd = {k: v.half() for k, v in self.state_dict().items() if k.startswith(tuple(prefixes))}
        save_checkpoint(path, sd, TextCheckpointInfo(self.name, list(prefixes), info or {}), "text-encoder")

    def with_text(self, side: "str | os.PathLike | TextSide | None") -> "BaseEncoder":
        """This encoder with the stage-1 side `side` (TextSide.of: "base"/None leaves it unchanged, "stage1" or a
        stage-1 checkpoint path): every tower the checkpoint holds is loaded. A `.pt` / `.pth` path is a CLIP
        fine-tuned by CLIP4Cir ({'CLIP': state_dict}, openai: encoders), both towers taken.

        Image weights that differ from this encoder's change its image side: `image_digest` names them and
        describe() records it, so indexes extracted with the old image tower are refused (server) or extracted
        again (ensure_index). A text-only checkpoint leaves the image side shared, not copied: its indexes stay
        valid.
        """
        side = TextSide.of(side)
        if side.path is None:
            return self
        path = side.path
        sd = self._clip4cir_checkpoint(path) if path.suffix in (".pt", ".pth") else self._text_checkpoint(path)
        own = self.state_dict()
        bad = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
        if bad:
            raise ValueError(f"stage-1 checkpoint {path} does not fit {self.name}: {bad[:3]} ...")
        sd = {k: v.to(own[k].dtype) for k, v in sd.items()}
        digest = self._image_change(sd, own)
        new = copy.copy(self)
        new._modules = dict(self._modules)  # copy only the top-level modules the checkpoint changes
        for top in {k.split(".")[0] for k in sd}:
            new._modules[top] = copy.deepcopy(self._modules[top])
        new.load_state_dict(sd, strict=False)
        new.text_side = side
        new.image_digest = digest or self.image_digest
        new._text_side_changed()
        return new.eval()

    def _image_change(self, sd: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str | None:
        """A digest of the image-side weights of `sd` when they differ from this encoder's; None when `sd`
        changes none (they are dropped from `sd` then: a CLIP4Cir checkpoint fine-tuned with `--encoder text`
        holds the unchanged image tower, and must not invalidate indexes)."""
        try:
            prefixes = tuple(self.image_prefixes())
        except NotImplementedError:
            return None
        keys = sorted(k for k in sd if k.startswith(prefixes))
        if all(torch.equal(sd[k], own[k].cpu()) for k in keys):
            for k in keys:
                del sd[k]
            return None
        digest = hashlib.sha256()
        for k in keys:
            digest.update(k.encode() + sd[k].float().numpy().tobytes())
        return digest.hexdigest()[:16]

    def _text_checkpoint(self, path: Path) -> dict[str, torch.Tensor]:
        """The weights of one of our stage-1 checkpoints (safetensors + JSON), checked to be this encoder's."""
        meta_path = path.with_suffix(".json")
        if not path.exists() or not meta_path.exists():
            raise FileNotFoundError(f"text checkpoint {path} (+ {meta_path.name}) not found; "
                                    "make one with `python train.py text` or use 'base'")
        try:
            meta = config_from_dict(TextCheckpointInfo, json.loads(meta_path.read_text()))
        except (OSError, ValueError, TypeError, AttributeError) as e:   # not JSON, not an object, fields missing
            raise ValueError(f"text checkpoint config {meta_path} is damaged: {type(e).__name__}: {e}") from None
        if meta.encoder != self.name:
            raise ValueError(f"text checkpoint {path} was trained for encoder {meta.encoder!r}, not {self.name!r}")
        return load_tensors(path, "text checkpoint")   # truncated, garbage or non-finite: ValueError naming it

    def _clip4cir_checkpoint(self, path: Path) -> dict[str, torch.Tensor]:
        """Both towers of a CLIP fine-tuned by CLIP4Cir's scripts ({'CLIP': state_dict} of an OpenAI CLIP): the
        text side and the image tower ('visual.*'), which _image_change compares with this encoder's."""
        if not path.exists():
            raise FileNotFoundError(f"text checkpoint {path} not found")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 -- unpickling hostile bytes raises anything
            raise ValueError(f"text checkpoint {path} cannot be read by torch.load ({type(e).__name__})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("CLIP"), dict):
            raise ValueError(f"{path} is not a CLIP4Cir fine-tuned CLIP (a dict whose 'CLIP' entry is the state dict)")
        check_finite({k: v for k, v in obj["CLIP"].items() if isinstance(v, torch.Tensor)}, f"text checkpoint {path}")
        if not self.name.startswith("openai:"):
            raise ValueError(f"{path} holds OpenAI CLIP weights (as CLIP4Cir saves them): use it with an openai: "
                             f"encoder, not {self.name}")
        return {f"model.{k}": v for k, v in obj["CLIP"].items()}

    def _text_side_changed(self) -> None:
        """Hook for backends that compile the text tower (lite's ONNX session must follow new weights)."""


@dataclass
class TextCheckpointInfo:
    encoder: str                    # the encoder name the checkpoint belongs to (lite, hf:..., openai:...)
    prefixes: list[str]             # state-dict prefixes it replaces
    info: dict                      # training summary (triplets, epochs, validation metrics)

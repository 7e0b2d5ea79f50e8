"""CLIP backends: `hf:<id or dir>` through transformers and `openai:<name>` through the OpenAI `clip`
package (RN50x4 was the original CLIP4Cir encoder); both imported lazily. Both encode in float32, as
CLIP4Cir validates and evaluates (cir.precision); stage 1 fine-tunes their text and image towers."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from cir.encoders.base import BaseEncoder
from cir.encoders.preprocess import CLIP_MEAN, CLIP_STD, Preprocess
from cir.precision import float32

OPENAI_MODELS = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "ViT-B/32", "ViT-B/16", "ViT-L/14",
                 "ViT-L/14@336px")


class HFClipEncoder(BaseEncoder):
    """A CLIP model through transformers: any hub id (needs internet once) or a local folder."""

    def __init__(self, model_id: str, device: torch.device, preprocess: str = "targetpad"):
        super().__init__()
        from transformers import AutoTokenizer, CLIPModel  # lazily: heavy, and only this backend needs it
        self.name, self._device = f"hf:{model_id}", device
        self.model = float32(CLIPModel.from_pretrained(model_id)).to(device).eval()
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
        return self.image_forward(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_forward(texts)

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

    def image_prefixes(self) -> list[str]:
        return ["model.vision_model.", "model.visual_projection."]

    def image_forward(self, stems: torch.Tensor) -> torch.Tensor:
        return self._pooled(self.model.get_image_features(pixel_values=stems.to(self._device))).float()


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
        # clip.load gives float16 weights on CUDA: float32 ones, as CLIP4Cir validates and fine-tunes with
        self.model = float32(clip.load(model_name, device=device, jit=False)[0]).eval()
        self.dim = self.model.text_projection.shape[1]
        self.preprocess = Preprocess(preprocess, self.model.visual.input_resolution, CLIP_MEAN, CLIP_STD)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.image_forward(pixels)

    def _encode_texts(self, texts: list[str]) -> torch.Tensor:
        return self.text_forward(texts)

    def text_prefixes(self, layers: int = 0) -> list[str]:
        return ["model.token_embedding.", "model.positional_embedding", "model.transformer.", "model.ln_final.",
                "model.text_projection"]

    def text_forward(self, texts: list[str]) -> torch.Tensor:
        tokens = self._clip.tokenize(list(texts), truncate=True).to(self._device)
        return self.model.encode_text(tokens).float()

    def image_prefixes(self) -> list[str]:
        return ["model.visual."]

    def image_forward(self, stems: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(stems.to(self._device, self.model.dtype)).float()

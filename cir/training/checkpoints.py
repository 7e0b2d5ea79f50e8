"""What a composed training run keeps on disk besides its best checkpoint (--out).

    resume state   after every epoch, under --cache-dir, keyed by the run's settings: an interrupted run
                   resumes by itself; removed when the run ends
    --save-training  every validated epoch's checkpoint beside --out (<stem>.epoch<N><suffix>, loadable as --out
                   is) and the last training state (<stem>.last.pt: weights, optimiser, history, best so far),
                   kept after the run: `--resume` continues from it, e.g. with more --epochs
    --dtype        float16 checkpoints (the default: half the size) or float32 (exactly the trained numbers)

Every file is written atomically (cir.utils.atomic_write): a kill never leaves half a checkpoint under its name.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open

from cir.training.config import ComposedConfig
from cir.utils import atomic_write, save_tensors

log = logging.getLogger("train")
TORCH_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def _plain(value: object) -> object:
    """JSON-normalised (tuples become lists): what a state records and compares as the run's settings."""
    return json.loads(json.dumps(value, default=str))


class Checkpointer:
    """Per-epoch training state, so a run continues where it stopped (see the module docstring)."""

    def __init__(self, cfg: ComposedConfig):
        self.cfg = cfg
        self.path = cfg.resume_file()
        self.key = _plain(cfg.resume_args())
        if cfg.restart and self.path.exists():
            self.path.unlink()

    def load(self) -> dict | None:
        """The state to continue from: --resume's file, or this run's interrupted state, whichever went
        further; None to start afresh. ValueError when --resume's state is another run's."""
        states = []
        if self.cfg.resume:
            path = self.cfg.last_file() if self.cfg.resume == "last" else Path(self.cfg.resume)
            if not path.is_file():
                raise FileNotFoundError(f"--resume: no training state at {path} (`--save-training` writes "
                                        f"{self.cfg.last_file().name} beside --out)")
            states.append((path, self._read(path)))
        if self.path.exists():
            states.append((self.path, self._read(self.path)))
        if not states:
            return None
        path, state = max(states, key=lambda s: s[1]["epoch"])
        log.info("resuming from %s (epoch %d done)", path, state["epoch"])
        return state

    def _read(self, path: Path) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if "key" in state and state["key"] != self.key:  # states written before the key was recorded: by name
            differ = sorted(k for k in set(self.key) | set(state["key"]) if self.key.get(k) != state["key"].get(k))
            raise ValueError(f"{path} is the state of a run with other settings (differing: {', '.join(differ)}); "
                             "resume with the same ones, or drop --resume to start over")
        return state

    def save(self, state: dict) -> None:
        """This epoch's state under the cache dir and, with --save-training, as the last state beside --out."""
        with atomic_write(self.path) as f:
            torch.save({**state, "key": self.key}, f)
        if self.cfg.save_training:
            publish(self.path, self.cfg.last_file())

    def done(self) -> None:
        """The run ended: its resume state goes (the --save-training files stay)."""
        self.path.unlink(missing_ok=True)


def publish(src: Path, dst: Path) -> None:
    """`dst` atomically becomes a copy of `src`: a hard link when both are on one file system (the state is
    written once, not twice), else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
        except OSError:  # another file system (or no hard links): copy
            with atomic_write(dst) as f, open(src, "rb") as s:
                shutil.copyfileobj(s, f)
            return
        os.replace(tmp, dst)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)


def widen(path: Path, weights: dict[str, torch.Tensor], dtype: str) -> None:
    """Rewrite a safetensors checkpoint written in float16 with the same tensors taken from `weights` in
    `dtype` (its metadata and JSON beside it unchanged): float32 checkpoints from writers that store float16."""
    if dtype == "float16":
        return
    with safe_open(str(path), "pt") as f:
        names: Sequence[str] = list(f.keys())
        metadata = f.metadata()
    save_tensors(path, {k: weights[k].detach().to(TORCH_DTYPES[dtype]) for k in names}, metadata=metadata)

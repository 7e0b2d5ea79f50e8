"""torch.hub entry points.

    model = torch.hub.load("<owner>/<repo>", "encoder", name="lite")     # the offline lite encoder
    model = torch.hub.load("<owner>/<repo>", "encoder", name="hf:openai/clip-vit-base-patch32")
    fuse = torch.hub.load("<owner>/<repo>", "combiner")                  # the shipped lite Combiner
    fuse = torch.hub.load("<owner>/<repo>", "combiner", name="cirr_combiner.pt")  # an original CLIP4Cir one
    fuse = torch.hub.load("<owner>/<repo>", "combiner", dataset="cirr")  # the authors' released one (RN50x4)
"""
dependencies = ["torch", "numpy", "PIL", "safetensors"]

import os  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from cir.combiner import SHIPPED_COMBINERS, Combiner  # noqa: E402
from cir.encoders import BaseEncoder, available_models, load  # noqa: E402
from cir.hub import RELEASED_COMBINERS, released_combiner  # noqa: E402


def encoder(name: str = "lite", device: str = "auto", **kwargs) -> BaseEncoder:
    """An image/text encoder (see encoders.available_models()); `encode_images`, `encode_texts`, `preprocess`;
    `text="stage1"` (or a checkpoint path) loads a stage-1 text side."""
    return load(name, device, **kwargs)


def lite(device: str = "auto", **kwargs) -> BaseEncoder:
    """The offline lite dual encoder with the shipped projection heads."""
    return load("lite", device, **kwargs)


def combiner(name: str | None = None, map_location: str | torch.device = "cpu", dataset: str | None = None,
             sha256: str | None = None, model_dir: str | os.PathLike | None = None,
             progress: bool = True) -> Combiner:
    """A trained Combiner, in eval mode: a shipped one by short name (combiner.SHIPPED_COMBINERS, default
    "combiner"), a checkpoint path (our .safetensors + .json, or an original CLIP4Cir .pt/.pth whose 'Combiner'
    entry is the state dict), or with `dataset="cirr"|"fashioniq"` the authors' released one (openai:RN50x4
    features), downloaded once into torch.hub's cache; `sha256` pins that file (the authors publish none)."""
    if dataset is not None:
        if name is not None:
            raise ValueError("give a Combiner name or path, or dataset=, not both")
        return released_combiner(dataset, map_location, sha256=sha256, model_dir=model_dir, progress=progress)
    name = "combiner" if name is None else name
    path = SHIPPED_COMBINERS.get(name, Path(name))
    if name not in SHIPPED_COMBINERS and not path.is_file():
        raise ValueError(f"unknown combiner {name!r}; valid: {', '.join(SHIPPED_COMBINERS)} or a checkpoint path "
                         f"(the authors' released ones: dataset={' or '.join(map(repr, RELEASED_COMBINERS))})")
    return Combiner.load(path, map_location)


__all__ = ["encoder", "lite", "combiner", "available_models"]

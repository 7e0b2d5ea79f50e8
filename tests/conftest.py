"""Shared fixtures: where the shared data lives, and one real lite encoder per test session."""
from __future__ import annotations

from pathlib import Path

import pytest

from cir import encoders
from cir.data import catalog_images, cirr_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
CATALOG = SHARED / "fashion-catalog"


@pytest.fixture(scope="session")
def catalog_root() -> Path:
    if not (CATALOG / "styles.csv").exists():
        pytest.skip(f"the catalogue is not at {CATALOG}")
    return CATALOG


@pytest.fixture(scope="session")
def lite_encoder():
    return encoders.load("lite", "cpu")


# ----------------------------------------------------------------------------------------------- web demo

CIRR_FORMATS = SHARED / "formats" / "cirr_dataset"
DEMO_CATALOG_IMAGES = 60   # the demo tests search the first 60 catalogue test images: big enough for 24 results
DEMO_CIRR_GROUPS = 2       # and two real CIRR val img_set groups, drawn as placeholder images


def _fake_cirr(root: Path) -> None:
    """A CIRR val layout holding the first img_set groups of the real annotation file, with generated PNGs."""
    import json

    from PIL import Image, ImageDraw
    triplets = json.loads((CIRR_FORMATS / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    sets: dict[int, list] = {}
    for t in triplets:
        if len(sets) < DEMO_CIRR_GROUPS or t["img_set"]["id"] in sets:
            sets.setdefault(t["img_set"]["id"], []).append(t)
    kept = [t for ts in sets.values() for t in ts]
    names = sorted({m for t in kept for m in t["img_set"]["members"]} | {t["reference"] for t in kept})
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "dev").mkdir()
    for i, n in enumerate(names):
        im = Image.new("RGB", (96, 72), ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256))
        ImageDraw.Draw(im).ellipse((10 + i, 10, 60 + i, 60), fill=((i * 17) % 256, 255 - (i * 40) % 256, 90))
        im.save(root / "dev" / f"{n}.png")
    (root / "cirr" / "captions" / "cap.rc2.val.json").write_text(json.dumps(kept))
    (root / "cirr" / "image_splits" / "split.rc2.val.json").write_text(
        json.dumps({n: f"./dev/{n}.png" for n in names}))


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory, catalog_root, lite_encoder):
    """Everything a small demo app needs, built once: feature indexes (60 catalogue test images, a tiny
    CIRR val set), two tiny random Combiners (one paired with a stage-1 text checkpoint) and that checkpoint.

    Returns the keyword arguments of app.Settings, except upload_dir (each app gets its own).
    """
    import torch

    from cir.combiner import Combiner, CombinerConfig
    from cir.encoders import TextCheckpointInfo
    from cir.extraction.local import ensure_index
    from cir.utils import save_checkpoint

    base = tmp_path_factory.mktemp("demo")
    features = base / "features"
    records = catalog_images(catalog_root, "test")[:DEMO_CATALOG_IMAGES]
    ensure_index(records, lite_encoder, features / "catalog-test", workers=0,
                 info={"dataset": "catalog", "split": "test", "data_root": str(catalog_root)})
    cirr_root = base / "cirr_dataset"
    _fake_cirr(cirr_root)
    ensure_index(cirr_images(cirr_root, "val"), lite_encoder, features / "cirr-val", workers=0,
                 info={"dataset": "cirr", "split": "val", "data_root": str(cirr_root)})

    weights = base / "weights"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        # A "stage-1" text side: the shipped text head, perturbed so its results differ from base.
        sd = {k: v.half() for k, v in lite_encoder.state_dict().items() if k.startswith("heads.text.")}
        sd = {k: (v.float() + 0.05 * torch.randn_like(v.float())).half() for k, v in sd.items()}
        stage1 = weights / "text-s1.safetensors"
        save_checkpoint(stage1, sd, TextCheckpointInfo("lite", ["heads.text."], {}), "text-encoder")
        tiny = CombinerConfig(feature_dim=lite_encoder.dim, projection_dim=32, hidden_dim=64, encoder="lite")
        Combiner(tiny).save(weights / "c.safetensors")
        Combiner(CombinerConfig(**{**tiny.__dict__, "text_encoder": str(stage1)})).save(weights / "c-s1.safetensors")
    return {"features_root": features, "encoder_obj": lite_encoder, "default_dataset": "catalog-test",
            "combiners": {"tiny": str(weights / "c.safetensors"), "tiny-s1": str(weights / "c-s1.safetensors")},
            "text_checkpoints": {"stage1": str(stage1)}, "data_root": None}

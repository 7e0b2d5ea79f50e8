"""Robustness of the lite image side to photos that are not studio shots, on the catalogue's test split.

    python3 benchmarks/bench_photos.py [--heads PATH ...]

Each of the 993 test images is turned into a "photo" (augment.py with its background always replaced by a
muted textured one, plus crops, flips, small rotations; seeded, never seen in training: the heads train on
train images only) and used as an image->image query against the 993 clean test images. Reported: R@1 of
its own clean image, and P@10 of the same type and colour (its own image excluded). One row per heads file
(default: the shipped weights/lite.safetensors).
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cir import encoders  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.evaluation.metrics import attribute_precision_at_k  # noqa: E402
from cir.evaluation.protocols import image2image  # noqa: E402
from cir.index import FeatureIndex, search  # noqa: E402
from cir.paths import WEIGHTS_DIR  # noqa: E402
from cir.training.augment import augment  # noqa: E402
from cir.utils import setup_logging  # noqa: E402


def encode(enc, images: list[Image.Image], batch: int = 64) -> torch.Tensor:
    return torch.cat([enc.encode_images(images[i:i + batch]) for i in range(0, len(images), batch)])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", nargs="*", default=[str(WEIGHTS_DIR / "lite.safetensors")],
                   help="lite heads files to compare (default: the shipped ones)")
    p.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the photo views")
    args = p.parse_args()
    setup_logging()
    recs = catalog_images(resolve_data_root("catalog", args.data_root), "test")
    clean = [Image.open(r.path).convert("RGB") for r in recs]
    photos = [augment(im, random.Random(args.seed * 100_000 + i), background_p=1.0) for i, im in enumerate(clean)]
    key = [(r.attrs.get("articleType"), r.attrs.get("baseColour")) for r in recs]
    print("| heads | clean image->image P@10 | photo -> own clean image R@1 | photo P@10 same type+colour |")
    print("|---|---:|---:|---:|")
    for heads in args.heads:
        enc = encoders.load("lite", "cpu", heads=heads)
        gallery = FeatureIndex(encode(enc, clean), [r.name for r in recs])
        queries = encode(enc, photos)
        own = torch.arange(len(recs))
        _, first = search(queries, gallery, 1)
        r1 = 100 * float((first[:, 0] == own).float().mean())
        _, others = search(queries, gallery, 10, exclude=own.tolist())  # the photo's own clean image left out
        p10 = attribute_precision_at_k(others, key, key, 10)
        clean_p10 = image2image(gallery, recs)["P@10"]
        print(f"| {heads} | {clean_p10:.1f} | {r1:.1f} | {p10:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Real photos as references: people's photos of clothes searched against the whole catalogue, as uploaded.

    python3 benchmarks/bench_real_photos.py [--split test] [--combiner PATH ...]

Each photo of `real-photos/` (`--split`, default test: 348 photos, never trained on) goes through the
server's upload decode (serving.decode.decode_upload) and the lite encoder, then searches the whole
catalogue (9,583 images, the demo's default dataset, `features/catalog-all`):

- photo -> shop, image mode: share of the top 10 whose article type is one the photo's class accepts
  (cir.data.photos.PHOTO_CLASSES, the one place deciding that), overall and per class;
- photo + "this in {colour}" (a colour drawn per photo, seeded, among the colours with at least 10 catalogue
  items of the class's types, so the query can fill its top 10; for the classes the catalogue has few of,
  dresses and skirts, among their 3 most common colours): share of the top 10 of an accepted type
  in that colour, for each fusion method, beside the same wish typed as text ("red t-shirt", text mode:
  the baseline a shopper has) and the caption alone as text.
"""
from __future__ import annotations

import argparse
import random
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cir import encoders  # noqa: E402
from cir.catalog.descriptions import colour_phrase  # noqa: E402
from cir.combiner import compose, load_method  # noqa: E402
from cir.data import known  # noqa: E402
from cir.data.photos import PHOTO_CLASSES, photo_images, photos_root  # noqa: E402
from cir.evaluation.runs import load_text_side  # noqa: E402
from cir.extraction import IndexStore, open_dataset_index  # noqa: E402
from cir.index import search  # noqa: E402
from cir.serving.decode import decode_upload  # noqa: E402
from cir.serving.uploads import UPLOAD_MAX_SIDE, UploadLimits  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

MIN_ITEMS = 10  # a wanted colour needs this many catalogue items of the class's types: the top 10 can be all right


def upload_features(enc, paths: list[Path], batch: int = 64) -> torch.Tensor:
    """Raw image features of photos decoded exactly as the server decodes uploads."""
    limit = UploadLimits().max_pixels
    images = [decode_upload(p.read_bytes(), limit, UPLOAD_MAX_SIDE)[0] for p in paths]
    return torch.cat([enc.encode_images(images[i:i + batch], raw=True) for i in range(0, len(images), batch)])


def colour_wishes(labels: list[str], gallery: list[dict], seed: int) -> list[str]:
    """A wanted colour per photo among those its class's types have at least MIN_ITEMS of."""
    rng = random.Random(seed)
    by_class = {}
    for label, pc in PHOTO_CLASSES.items():
        counts = Counter(a.get("baseColour") for a in gallery if a.get("articleType") in pc.types)
        common = sorted(c for c, n in counts.items() if n >= MIN_ITEMS and known(c))
        # Classes the catalogue has few of (dresses, skirts): their 3 most common colours (top 10 not all right)
        by_class[label] = common or sorted(c for c, _ in counts.most_common(3) if known(c))
    return [rng.choice(by_class[label]) for label in labels]


def share(ranked: torch.Tensor, ok) -> list[float]:
    """Per query, the share (%) of its top 10 for which ok(query, gallery row) holds."""
    return [100 * sum(ok(q, int(j)) for j in row[:10]) / 10 for q, row in enumerate(ranked)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="real-photos split to query with")
    p.add_argument("--data-root", default=None, help="data folder holding real-photos/ and fashion-catalog/ "
                                                     "(default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--features", default="features", help="features root holding catalog-all (extracted if missing)")
    p.add_argument("--combiner", nargs="*", default=["combiner", "combiner-stage1"],
                   help="Combiners to compare: shipped names or checkpoint paths")
    p.add_argument("--heads", default=None, help="lite heads file (default: the shipped weights/lite.safetensors); "
                                                 "give each heads file its own --features root")
    p.add_argument("--seed", type=int, default=0, help="seed of the wanted colours")
    args = p.parse_args()
    setup_logging()
    enc = encoders.load("lite", heads=args.heads) if args.heads else encoders.load("lite")
    cat = open_dataset_index(enc, "catalog", None, IndexStore(Path(args.features)), args.data_root)
    attrs_of = {r.name: r.attrs for r in cat.records}
    gallery = [attrs_of.get(n, {}) for n in cat.index.names]
    photos = photo_images(photos_root(args.data_root), args.split)
    labels = [r.attrs["label"] for r in photos]
    feats = upload_features(enc, [r.path for r in photos])
    type_ok = lambda q, j: gallery[j].get("articleType") in PHOTO_CLASSES[labels[q]].types  # noqa: E731
    _, ranked = search(feats, cat.index, 10)
    per_photo = share(ranked, type_ok)
    by_class = defaultdict(list)
    for label, s in zip(labels, per_photo):
        by_class[label].append(s)
    print(f"photo -> shop, image mode, {len(photos)} {args.split} photos: type P@10 "
          f"{sum(per_photo) / len(per_photo):.1f} (" + ", ".join(
              f"{c} {sum(v) / len(v):.0f}" for c, v in sorted(by_class.items(), key=lambda kv: -len(kv[1]))) + ")")
    colours = colour_wishes(labels, gallery, args.seed)
    captions = [f"this in {colour_phrase(c)}" for c in colours]
    wishes = [f"{colour_phrase(c)} {PHOTO_CLASSES[lab].noun}" for c, lab in zip(colours, labels)]
    both_ok = lambda q, j: type_ok(q, j) and gallery[j].get("baseColour") == colours[q]  # noqa: E731
    rows = [("image only", "image", captions), ("caption alone as text", "text", captions),
            ("the wish typed as text (text mode)", "text", wishes), ("sum", "sum", captions)]
    rows += [(f"Combiner {spec}", spec, captions) for spec in args.combiner]
    print(f'\nphoto + "this in {{colour}}", {len(photos)} queries: top-10 share of an accepted type in that colour\n')
    print("| method | type+colour P@10 | type P@10 | colour P@10 |\n|---|---:|---:|---:|")
    for label, spec, texts in rows:
        method, combiner = load_method(spec)
        q = compose(enc.with_text(load_text_side(combiner, None)), feats, texts, method, combiner)
        _, ranked = search(q, cat.index, 10)
        colour_ok = lambda q, j: gallery[j].get("baseColour") == colours[q]  # noqa: E731
        cells = [sum(v) / len(v) for v in (share(ranked, both_ok), share(ranked, type_ok), share(ranked, colour_ok))]
        print(f"| {label} | " + " | ".join(f"{c:.1f}" for c in cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

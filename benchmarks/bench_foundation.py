"""Benchmark of the foundation: retrieval quality, extraction throughput and index load time.

    python benchmarks/bench_foundation.py [--data-root DIR] [--device auto]

Measures, on the catalogue with the shipped lite encoder:
  - text->image R@1/5/10 and image->image P@10 on the test split (993 images), as evaluate.py computes them;
  - extraction throughput in images/s, JPEG decode included, on the whole catalogue (9,583 images), from
    scratch into a temporary folder (nothing cached);
  - the time to load the 9,583-image feature folder (imports excluded), median of 5;
  - linear probes on the image embedding: a logistic regression per attribute (colour, gender, type, usage,
    pattern) fitted on the train split's embeddings, accuracy on the test split's.
Prints a markdown table for README.md and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import platform  # noqa: E402

import torch  # noqa: E402

from cir import encoders  # noqa: E402
from cir.data import catalog_images, known, resolve_data_root  # noqa: E402
from cir.evaluation.protocols import image2image, text2image  # noqa: E402
from cir.extraction.local import extract_index  # noqa: E402
from cir.index import FeatureIndex, load_index  # noqa: E402
from cir.utils import setup_logging  # noqa: E402


def probes(index: FeatureIndex, train: list, test: list) -> dict[str, float]:
    """Test accuracy (%) of a logistic regression per attribute, fitted on the train rows' embeddings."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    row = {n: i for i, n in enumerate(index.names)}
    mat = index.matrix().numpy()
    out = {}
    for attr in ("baseColour", "gender", "articleType", "usage", "pattern"):
        tr = [(row[r.name], r.attrs[attr]) for r in train if r.name in row and known(r.attrs.get(attr))]
        te = [(row[r.name], r.attrs[attr]) for r in test if r.name in row and known(r.attrs.get(attr))]
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
        clf.fit(mat[[i for i, _ in tr]], [v for _, v in tr])
        out[attr] = round(100 * float((clf.predict(mat[[i for i, _ in te]]) == [v for _, v in te]).mean()), 1)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--workers", type=int, default=None, help="decoding workers (default: min(4, cores))")
    p.add_argument("--heads", default=None, help="other lite heads to measure (default: the shipped weights)")
    p.add_argument("--split", default="all", help="catalogue split to extract for the throughput figure")
    args = p.parse_args()
    setup_logging()
    root = resolve_data_root("catalog", args.data_root)
    enc = encoders.load("lite", args.device, heads=args.heads)
    out = {"device": str(enc.device), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                     "machine": platform.machine()}
    with tempfile.TemporaryDirectory() as tmp:
        recs = catalog_images(root, args.split)
        res = extract_index(recs, enc, Path(tmp) / "all", batch_size=args.batch_size, workers=args.workers)
        out["extract_images"] = res.count
        out["extract_img_per_s"] = round(len(recs) / res.seconds, 1)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            idx = load_index(Path(tmp) / "all")
            times.append(time.perf_counter() - t)
        out["load_index_ms"] = round(1000 * statistics.median(times), 1)
        test = catalog_images(root, "test")
        names = {r.name for r in test}
        test_rows = [i for i, n in enumerate(idx.names) if n in names]
        test_idx = FeatureIndex(idx.features[test_rows], [idx.names[i] for i in test_rows])
        out["text2image"] = text2image(enc, test_idx, test)
        out["image2image"] = image2image(test_idx, test)
        out["probes"] = probes(idx, catalog_images(root, "train"), test)
    t2i, i2i = out["text2image"], out["image2image"]
    rows = [
        ("text->image R@1 / R@5 / R@10, catalogue test (993)", f"{t2i['R@1']} / {t2i['R@5']} / {t2i['R@10']}",
         "R@1 >= 52, R@10 >= 92"),
        ("image->image P@10 same type+colour (type only / colour only)",
         f"{i2i['P@10']} ({i2i['P@10_type']} / {i2i['P@10_colour']})", ">= 30"),
        ("linear probe on the image embedding, test accuracy %: " + " / ".join(out["probes"]),
         " / ".join(str(v) for v in out["probes"].values()), "colour >= 75"),
        (f"lite extraction, {out['extract_images']} JPEGs, decode included, {out['device']}, {out['cpu_count']} cores",
         f"{out['extract_img_per_s']} img/s", ">= 80 img/s"),
        (f"load {out['extract_images']}-image feature folder (median of 5)", f"{out['load_index_ms']} ms",
         "well under 1 s"),
    ]
    print("| measure | result | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

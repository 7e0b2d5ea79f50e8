"""The classical baseline (bof, Kmeans-IR) against the project's encoders on the catalogue: quality and cost.

    python3 benchmarks/bench_classical.py                        # bof and lite, catalogue test split
    python3 benchmarks/bench_classical.py --encoders bof lite hf:openai/clip-vit-base-patch32

Quality, on the test split (993 images; every test image is an image query against the others):
  threshold sweep  precision (same articleType) of all results whose cosine is >= a threshold, swept; and, as
                   the encoders' scores live on different scales, at the thresholds that return on average
                   1, 5, 10, 50 results per query (equal volume)
  image->image     P@10 same articleType and baseColour (evaluate.image2image), and same articleType only
  label queries    articleType: the two-stage retrieval (label_retrieval.py) fitted on --train-images train
                   images, precision of the whole returned cluster and P@10, mean over the test labels; for
                   encoders with text, also the text query "<label>" ranked by index.search (P@10)
Cost: features/s (decode + encode, batches of 32, over --speed-images test images), memory per image
(float16 row + float32 norm), index size on disk, query time (one image query by index.search; one label query
from precomputed cluster assignments), training time (bof: vocabulary + PCA from weights/bof.train.json;
clustering: the two-stage k-means, timed here). Indexes are cached under --features (their build time is not
counted). Prints a markdown table (with the load average: other jobs may share the machine), then JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cir import encoders  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.evaluation.label_retrieval import LabelClusters, index_folder, label_precision, sample_records  # noqa: E402
from cir.evaluation.protocols import image2image  # noqa: E402
from cir.extraction.local import ensure_index  # noqa: E402
from cir.index import FEATURES_FILE, search  # noqa: E402
from cir.paths import WEIGHTS_DIR  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench_classical")
VOLUMES = (1, 5, 10, 50)


def threshold_sweep(feats: torch.Tensor, labels: np.ndarray, thresholds: np.ndarray) -> dict:
    """Precision (same label) of the results with cosine >= t, the query itself left out, per threshold;
    and the same at the thresholds returning VOLUMES results per query on average."""
    sims = feats @ feats.T
    sims.fill_diagonal_(-2.0)
    same = torch.from_numpy(labels[:, None] == labels[None, :])
    n = len(feats)
    flat = sims.flatten()
    order = torch.argsort(flat, descending=True)
    hits = torch.cumsum(same.flatten()[order].float(), 0)

    def at_count(c: int) -> tuple[float, float]:
        c = max(1, min(c, len(order)))
        return float(flat[order[c - 1]]), round(100 * float(hits[c - 1]) / c, 2)

    fixed = []
    for t in thresholds:
        c = int((flat >= t).sum())
        fixed.append({"threshold": round(float(t), 3), "per_query": round(c / n, 2),
                      "precision": at_count(c)[1] if c else None})
    volume = []
    for v in VOLUMES:
        t, p = at_count(v * n)
        volume.append({"per_query": v, "threshold": round(t, 4), "precision": p})
    return {"fixed": fixed, "volume": volume}


def features_per_second(encoder, records, batch: int = 32) -> float:
    """Decode + encode throughput over `records`, after one warm-up batch."""
    encoder.encode_images([Image.open(r.path) for r in records[:4]])
    t0 = time.perf_counter()
    for i in range(0, len(records), batch):
        encoder.encode_images([Image.open(r.path) for r in records[i:i + batch]])
    return len(records) / (time.perf_counter() - t0)


def query_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return round(1000 * float(np.median(times)), 3)


def label_queries(encoder, train_idx, train_labels, idx, labels: np.ndarray) -> dict:
    """The two-stage label retrieval (fit timed) and, where the encoder has text, the text query baseline."""
    t0 = time.perf_counter()
    clusters = LabelClusters.fit(train_idx.matrix().numpy(), train_labels, seed=0)
    fit_s = time.perf_counter() - t0
    feats = idx.matrix().numpy()
    queries = sorted(set(labels.tolist()))
    out = {"two_stage": label_precision(clusters, feats, labels, queries, k=10), "clustering_s": round(fit_s, 2)}
    assigned = clusters.assign(feats)
    named = [q for q in queries if q in clusters.names] or clusters.labels
    out["two_stage_query_ms"] = query_ms(lambda i: clusters.query(named[i % len(named)], feats, assigned), 50)
    if not getattr(encoder, "image_only", False):
        q = encoder.encode_texts(queries)
        _, ids = search(q, idx, 10)
        p = [(labels[ids[i].numpy()] == lab).mean() for i, lab in enumerate(queries)]
        out["text_query_P@10"] = round(100 * float(np.mean(p)), 2)
    return out


def bench_encoder(name: str, root: Path, features: Path, train_images: int, speed_images: int,
                  thresholds: np.ndarray) -> dict:
    encoder = encoders.load(name, "cpu")
    test = catalog_images(root, "test")
    train = sample_records(catalog_images(root, "train"), train_images)
    idx = ensure_index(test, encoder, features / index_folder("test", name))
    train_idx = ensure_index(train, encoder, features / index_folder("train", name, train_images))
    by_name = {r.name: r.attrs for r in test + train}
    labels = np.asarray([by_name[n]["articleType"] for n in idx.names])
    train_labels = [by_name[n]["articleType"] for n in train_idx.names]
    out = {"encoder": encoder.name, "dim": encoder.dim, "test_images": len(idx), "train_images": len(train_idx)}
    out["image2image"] = image2image(idx, test)
    out["sweep"] = threshold_sweep(idx.matrix(), labels, thresholds)
    out["labels"] = label_queries(encoder, train_idx, train_labels, idx, labels)
    out["features_per_s"] = round(features_per_second(encoder, test[:speed_images]), 1)
    out["bytes_per_image"] = encoder.dim * 2 + 4
    out["index_bytes"] = os.path.getsize(Path(idx.path) / FEATURES_FILE)
    out["image_query_ms"] = query_ms(lambda i: search(idx.features[i:i + 1].float(), idx, 10, exclude=[[i]]), 100)
    if name == "bof":
        fitted = json.loads((WEIGHTS_DIR / "bof.train.json").read_text())
        out["training_s"] = {"vocabulary": fitted["vocab_seconds"], "pca": fitted["pca_seconds"]}
    return out


def table(results: list[dict]) -> str:
    rows = ["| | " + " | ".join(r["encoder"] for r in results) + " |", "|---|" + "---|" * len(results)]

    def row(label, fn):
        rows.append(f"| {label} | " + " | ".join(str(fn(r)) for r in results) + " |")

    for v in range(len(VOLUMES)):
        row(f"precision, {VOLUMES[v]} results/query above threshold (t)",
            lambda r: f"{r['sweep']['volume'][v]['precision']} (t={r['sweep']['volume'][v]['threshold']:.2f})")
    row("image→image P@10 type+colour", lambda r: r["image2image"]["P@10"])
    row("image→image P@10 type", lambda r: r["image2image"]["P@10_type"])
    row("label query, two-stage: cluster precision", lambda r: r["labels"]["two_stage"]["precision"])
    row("label query, two-stage: P@10", lambda r: r["labels"]["two_stage"]["P@10"])
    row("label query, two-stage: test labels some cluster is named by",
        lambda r: f"{r['labels']['two_stage']['labels_findable']} / {r['labels']['two_stage']['queries']}")
    row("label query, text \"<label>\": P@10", lambda r: r["labels"].get("text_query_P@10", "refused"))
    row("features/s (decode+encode)", lambda r: r["features_per_s"])
    row("memory per image (bytes)", lambda r: r["bytes_per_image"])
    row("index size, test split (KiB)", lambda r: round(r["index_bytes"] / 1024, 1))
    row("image query (ms, index.search)", lambda r: r["image_query_ms"])
    row("label query (ms, two-stage)", lambda r: r["labels"]["two_stage_query_ms"])
    row("training (s)", lambda r: " + ".join(f"{k} {v}" for k, v in r.get("training_s", {}).items()) or "shipped")
    row(f"clustering, {results[0]['train_images']} train images (s)", lambda r: r["labels"]["clustering_s"])
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoders", nargs="+", default=["bof", "lite"], help="encoders to compare")
    p.add_argument("--data-root", default=None, help="catalogue folder (default: ../shared/data/fashion-catalog)")
    p.add_argument("--features", default="features/bench-classical", help="where the indexes are cached")
    p.add_argument("--train-images", type=int, default=3000, help="train images the two-stage clusters are fit on")
    p.add_argument("--speed-images", type=int, default=256, help="test images the features/s is timed on")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                   help="cosine thresholds of the fixed sweep")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args()
    setup_logging()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    root = resolve_data_root("catalog", args.data_root)
    results = [bench_encoder(e, root, Path(args.features), args.train_images, args.speed_images,
                             np.asarray(args.thresholds)) for e in args.encoders]
    print(f"\n{' '.join(sys.argv)}  (load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)\n")
    print(table(results))
    print(json.dumps(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

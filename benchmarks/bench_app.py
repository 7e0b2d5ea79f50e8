"""Speed of the web demo: composed queries on the whole catalogue through the Flask app, stage by stage.

    python3 benchmarks/bench_app.py [--queries 200] [--uploads 30] [--data-root DIR]

Builds the app exactly as `python3 app.py` does (features/catalog-all, extracted first if missing, about two
minutes once) and sends composed queries through Flask's test client: a fresh caption each time (text
encoding cold), then the same captions again (served by the text LRU cache). Uploads are timed with
catalogue photos. Uses the shipped Combiner when weights/combiner.safetensors exists, else a random one of
the shipped size (the fusion cost is the same). Prints a markdown table (p50 / p95 in ms) for README.md,
the command line that produced it and, last, one JSON line.
"""
from __future__ import annotations

import argparse
import io
import json
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import platform  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cir.combiner import SHIPPED_COMBINERS, Combiner, CombinerConfig  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.paths import REPO_DIR  # noqa: E402
from cir.serving.prepare import ensure_catalog  # noqa: E402
from cir.serving.settings import Settings  # noqa: E402
from cir.utils import setup_logging  # noqa: E402
from cir.web.app import create_app  # noqa: E402

log = logging.getLogger("bench_app")
COLOURS = ["red", "navy blue", "black", "white", "green", "yellow", "pink", "grey", "brown", "purple", "beige",
           "maroon", "olive", "orange", "teal", "silver", "gold", "cream", "lavender", "turquoise blue"]
SHAPES = ["is {c} instead", "make it {c} and casual", "the same but in {c}", "{c} with longer sleeves",
          "a {c} formal one", "is {c} and for women", "{c}, more sporty", "shows a {c} pattern",
          "is {c} and has no collar", "{c} and looser"]


def captions(n: int) -> list[str]:
    """n distinct relative captions, as people type them."""
    out = [s.format(c=c) for s in SHAPES for c in COLOURS]
    i = 0
    while len(out) < n:  # beyond the 200 combinations, number them
        out.append(f"{out[i % 200]} please {i}")
        i += 1
    return out[:n]


def pct(xs: list[float]) -> tuple[float, float]:
    a = np.asarray(xs, dtype=np.float64)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=200, help="composed queries with fresh captions (then again, cached)")
    p.add_argument("--uploads", type=int, default=30, help="uploads to time")
    p.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--features", default=str(REPO_DIR / "features"), help="features root (catalog-all is used)")
    p.add_argument("--device", default="cpu", help="device of the encoder (the demo's CPU figure: cpu)")
    p.add_argument("--seed", type=int, default=0, help="picks the references")
    args = p.parse_args()
    setup_logging()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings(features_root=Path(args.features), data_root=args.data_root, device=args.device,
                       upload_dir=Path(tmp) / "uploads", default_dataset="catalog-all")
        ensure_catalog(cfg)
        shipped = SHIPPED_COMBINERS["combiner"]
        if shipped.exists():
            cfg.combiners, combiner_note = {"combiner": str(shipped)}, f"shipped {shipped.name}"
        else:
            torch.manual_seed(0)
            c = Combiner(CombinerConfig(feature_dim=cfg.encoder_obj.dim, encoder=cfg.encoder_obj.name))
            c.save(Path(tmp) / "combiner.safetensors")
            cfg.combiners = {"combiner": str(Path(tmp) / "combiner.safetensors")}
            combiner_note = "random weights, shipped size (weights/combiner.safetensors not trained yet)"
        app = create_app(cfg)
        engine = app.extensions["cir"]
        ds = engine.datasets["catalog-all"]
        client = app.test_client()
        rng = random.Random(args.seed)
        refs = rng.sample(ds.index.names, args.queries)
        caps = captions(args.queries)

        def run(pairs):
            rows = []
            for ref, cap in pairs:
                t0 = time.perf_counter()
                r = client.post("/api/search", json={"dataset": "catalog-all", "mode": "composed", "reference": ref,
                                                     "caption": cap, "k": 24})
                wall = (time.perf_counter() - t0) * 1000
                d = r.get_json()
                assert r.status_code == 200, d
                rows.append({**d["timings"], "latency_ms": d["latency_ms"], "client_ms": wall})
            return rows

        cold = run(zip(refs, caps))                 # every caption new: the text encoder runs
        warm = run(zip(reversed(refs), caps))       # same captions, other references: text from the LRU cache
        assert all(not r["text_cached"] for r in cold) and all(r["text_cached"] for r in warm)

        photos = [r.path for r in catalog_images(resolve_data_root("catalog", args.data_root),
                                                           "test")[: args.uploads]]
        up_encode, up_total = [], []
        for path in photos:
            t0 = time.perf_counter()
            r = client.post("/api/upload", data={"file": (io.BytesIO(path.read_bytes()), path.name)},
                            content_type="multipart/form-data")
            up_total.append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 201, r.get_json()
            up_encode.append(r.get_json()["encode_ms"])

    stages = [
        ("encode text (new caption)", [r["encode_text_ms"] for r in cold]),
        ("encode text (LRU-cached caption)", [r["encode_text_ms"] for r in warm]),
        ("encode upload (one photo, at upload time)", up_encode),
        ("fuse (Combiner)", [r["fuse_ms"] for r in cold]),
        ("search (9,583 x 256, top 24)", [r["search_ms"] for r in cold]),
        ("**total, composed query, new caption**", [r["latency_ms"] for r in cold]),
        ("total, composed query, cached caption", [r["latency_ms"] for r in warm]),
        ("total incl. HTTP handling (test client), new caption", [r["client_ms"] for r in cold]),
        ("upload request, total (sniff, re-encode, store, encode)", up_total),
    ]
    cmd = "python3 " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print()
    print(f"Measured with `{cmd}` on {platform.machine()}, {os.cpu_count()} cores, device {args.device}, "
          f"{args.queries} composed queries on catalog-all ({len(ds.index)} images), {args.uploads} uploads; "
          f"Combiner: {combiner_note}; load average at the end {load:.2f}.")
    print()
    print("| stage | p50 ms | p95 ms |")
    print("|---|---:|---:|")
    summary = {}
    for name, xs in stages:
        p50, p95 = pct(xs)
        print(f"| {name} | {p50:.1f} | {p95:.1f} |")
        summary[name.strip("*")] = {"p50": round(p50, 2), "p95": round(p95, 2)}
    print()
    total_p50 = pct([r["latency_ms"] for r in cold])[0]
    print(json.dumps({"command": cmd, "queries": args.queries, "uploads": args.uploads, "combiner": combiner_note,
                      "composed_p50_ms": round(total_p50, 2), "target_ms": 30, "met": total_p50 < 30,
                      "stages": summary}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

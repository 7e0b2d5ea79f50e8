"""Cost of the caption picker on the whole catalogue: loading its annotations, the captions endpoint, and
what asking for the target's rank adds to a search; plus where the annotated targets rank.

    python3 benchmarks/bench_captions.py [--queries 200] [--features features]

Needs features/catalog-all (`python3 app.py --prepare-only` extracts it). The demo's default mode (composed
with the shipped Combiner, else sum) answers each reference's first annotated caption, the caption cached,
once without and once with `target`. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cir.serving.settings import Settings  # noqa: E402
from cir.utils import setup_logging  # noqa: E402
from cir.web.app import create_app  # noqa: E402

log = logging.getLogger("bench_captions")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=200, help="references (with annotations) to time")
    p.add_argument("--features", default="features", help="features root holding catalog-all")
    args = p.parse_args()
    setup_logging(False)
    app = create_app(Settings(features_root=Path(args.features), warm_up=True))
    eng = app.extensions["cir"]
    ds = eng.datasets["catalog-all"]
    t = time.perf_counter()
    n = ds.annotations.count()
    load_s = time.perf_counter() - t
    refs = [r for r in ds.index.names if ds.annotations.of(r)][:args.queries]
    client = app.test_client()
    t = time.perf_counter()
    for r in refs:
        client.get("/api/datasets/catalog-all/captions", query_string={"reference": r})
    endpoint_ms = (time.perf_counter() - t) / len(refs) * 1000
    mode = "composed" if eng.combiners else "sum"
    plain, with_target, ranks = [], [], []
    for r in refs:
        a = ds.annotations.of(r)[0]
        body = {"dataset": "catalog-all", "mode": mode, "reference": r, "caption": a.caption}
        eng.run(eng.parse(body))   # the caption's encoding cached: what remains is fusion and search
        t = time.perf_counter()
        eng.run(eng.parse(body))
        plain.append(time.perf_counter() - t)
        t = time.perf_counter()
        ranks.append(eng.run(eng.parse({**body, "target": a.target})).target.rank)
        with_target.append(time.perf_counter() - t)
    annotated = sum(1 for r in ds.index.names if ds.annotations.of(r))
    print(json.dumps({"annotations": n, "references": annotated, "first_load_s": round(load_s, 2),
                      "captions_endpoint_ms": round(endpoint_ms, 2), "mode": mode,
                      "search_p50_ms": round(statistics.median(plain) * 1000, 2),
                      "search_with_target_p50_ms": round(statistics.median(with_target) * 1000, 2),
                      "queries": len(refs), "median_target_rank": statistics.median(ranks),
                      "target_R@1/10/50": [round(100 * sum(x <= k for x in ranks) / len(ranks), 1)
                                           for k in (1, 10, 50)]}))


if __name__ == "__main__":
    main()

"""Retrieval metrics, as the papers report them.

    python evaluate.py --task text2image  --dataset catalog --split test
    python evaluate.py --task image2image --dataset catalog --split test

text2image: each product name queries the index of the split's images; R@1/5/10 (%) of its own photo.
image2image: precision@10 (%) of results sharing the query's articleType and baseColour (query removed).
Index features come from extracted files under --features when present, else are extracted (and kept).
All ranking goes through index.search. The last printed line is one JSON object with the metrics.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Sequence

import torch

import data_utils
from index import FeatureIndex, search
from utils import run_cli, setup_logging

log = logging.getLogger("evaluate")


def recall_at_k(ranked: torch.Tensor, targets: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """R@K in %: the share of queries whose target row is among the first K ranked ids."""
    hit = ranked == targets.view(-1, 1)
    return {f"R@{k}": round(100 * hit[:, :k].any(1).float().mean().item(), 2) for k in ks}


def attribute_precision_at_k(ranked: torch.Tensor, query_attrs: Sequence[tuple], gallery_attrs: Sequence[tuple],
                             k: int) -> float:
    """Precision@K in %: the share of the first K results whose attribute tuple equals the query's."""
    hits = [sum(gallery_attrs[j] == qa for j in row[:k]) / k for row, qa in zip(ranked.tolist(), query_attrs)]
    return round(100 * sum(hits) / max(len(hits), 1), 2)


def _encode_texts(encoder, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([encoder.encode_texts(texts[i:i + batch]) for i in range(0, len(texts), batch)])


def text2image(encoder, index: FeatureIndex, records: Sequence[data_utils.ImageRecord]) -> dict:
    """Product name -> its own photo."""
    recs = [r for r in records if r.name in index and r.attrs.get("productDisplayName", "").strip()]
    q = _encode_texts(encoder, [r.attrs["productDisplayName"] for r in recs])
    _, ids = search(q, index, 10)
    targets = torch.tensor([index.id_of(r.name) for r in recs])
    return {"queries": len(recs), **recall_at_k(ids, targets, (1, 5, 10))}


def image2image(index: FeatureIndex, records: Sequence[data_utils.ImageRecord], k: int = 10) -> dict:
    """Image -> images of the same type and colour (precision@k), the query itself excluded."""
    attrs = {r.name: r.attrs for r in records}
    rows = [i for i, n in enumerate(index.names) if n in attrs]
    _, ids = search(index.features[rows], index, k, exclude=rows)
    key = {f: [tuple(attrs.get(n, {}).get(a) for a in f) for n in index.names]
           for f in [("articleType", "baseColour"), ("articleType",), ("baseColour",)]}
    out = {"queries": len(rows)}
    for fields, name in [(("articleType", "baseColour"), f"P@{k}"), (("articleType",), f"P@{k}_type"),
                         (("baseColour",), f"P@{k}_colour")]:
        out[name] = attribute_precision_at_k(ids, [key[fields][i] for i in rows], key[fields], k)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True, choices=["text2image", "image2image"], help="what to measure")
    p.add_argument("--dataset", default="catalog", choices=["catalog"],
                   help="dataset (text2image and image2image need the catalogue's attributes)")
    p.add_argument("--data-root", default=None, help="dataset folder (default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--split", default="test", help="split whose images form the index and the queries")
    p.add_argument("--encoder", default="lite", help="encoder name: lite, hf:<id or dir>, openai:<model>")
    p.add_argument("--features", default="features",
                   help="features root: an index is read from <root>/<dataset>-<split> or extracted there")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch if extraction is needed")
    p.add_argument("--workers", type=int, default=None, help="decoding workers if extraction is needed")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)

    import encoders
    from extract_features import ensure_index, index_name
    root = data_utils.resolve_data_root(args.dataset, args.data_root)
    records = data_utils.list_images(args.dataset, root, args.split)
    encoder = encoders.load(args.encoder, args.device)
    index = ensure_index(records, encoder, Path(args.features) / index_name(args.dataset, args.split),
                         batch_size=args.batch_size, workers=args.workers,
                         info={"dataset": args.dataset, "split": args.split, "data_root": str(root)})
    t0 = time.time()
    metrics = text2image(encoder, index, records) if args.task == "text2image" else image2image(index, records)
    metrics = {"task": args.task, "dataset": args.dataset, "split": args.split, "encoder": encoder.name,
               "index_size": len(index), **metrics, "seconds": round(time.time() - t0, 2)}
    print(json.dumps(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

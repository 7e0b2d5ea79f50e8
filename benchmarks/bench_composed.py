"""The composed-retrieval results table of the README: every fusion method on the catalogue test triplets.

    python3 benchmarks/bench_composed.py            # prints a markdown table (about a minute on 2 cores)

Index = the 993 test images; triplets = triplets.generate(test images, seed 0, 500 per kind), with all
caption templates and with only the held-out ones (never seen in training). Each row is what
`python3 evaluate.py --task composed --combiner <method> [--text-encoder ...] [--phrasings heldout]` prints;
this script runs them in one process so the encoder and the index load once. The last row is an oracle, not a
method: the mean train-split feature of the items that have the wanted attributes, to show how far the lite
image space lets any query go.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data_utils  # noqa: E402
import encoders  # noqa: E402
import triplets  # noqa: E402
from evaluate import attribute_match_at_k, composed_catalog, recall_at_k  # noqa: E402
from extract_features import ensure_index, index_name  # noqa: E402
from index import search  # noqa: E402
from model import load_method  # noqa: E402
from utils import setup_logging  # noqa: E402

ROWS = [("image only", "image", "base"), ("text only", "text", "base"), ("sum (zero-shot baseline)", "sum", "base"),
        ("stage-1 text + sum", "sum", "stage1"), ("Combiner", "combiner", "base"),
        ("stage-1 text + Combiner", "combiner-stage1", "stage1")]


def oracle_queries(trips: list, encoder, root: Path) -> torch.Tensor:
    """Per triplet, the normalised mean train feature of items with its wanted attributes (None if there are none)."""
    recs = data_utils.catalog_images(root, "train")
    index = ensure_index(recs, encoder, Path("features") / index_name("catalog", "train"),
                         info={"dataset": "catalog", "split": "train", "data_root": str(root)})
    attrs = {r.name: tuple(r.attrs.get(k, "") for k in triplets.WANTED_KEYS) for r in recs}
    groups: dict[tuple, list[int]] = {}
    for row, name in enumerate(index.names):
        groups.setdefault(attrs[name], []).append(row)
    mat = index.matrix()
    return torch.stack([F.normalize(mat[groups.get(tuple(t.wanted[k] for k in triplets.WANTED_KEYS), [0])].mean(0),
                                    dim=-1) for t in trips])


def main() -> None:
    setup_logging()
    root = data_utils.resolve_data_root("catalog")
    records = data_utils.catalog_images(root, "test")
    base = encoders.load("lite")
    sides = {"base": base, "stage1": base.with_text(encoders.resolve_text("stage1"))}
    index = ensure_index(records, base, Path("features") / index_name("catalog", "test"),
                         info={"dataset": "catalog", "split": "test", "data_root": str(root)})
    trips = {p: triplets.generate(records, seed=0, per_kind=500, phrasings=p) for p in ("all", "heldout")}
    print("| method | R@1 | R@10 | R@50 | attr@10 | held-out wordings: R@10 | attr@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, spec, side in ROWS:
        method, combiner = load_method(spec)
        m = {p: composed_catalog(sides[side], index, records, trips[p], method, combiner).metrics for p in trips}
        a, h = m["all"], m["heldout"]
        print(f"| {label} | {a['R@1']:.1f} | {a['R@10']:.1f} | {a['R@50']:.1f} | {a['attr@10']:.1f} "
              f"| {h['R@10']:.1f} | {h['attr@10']:.1f} |")

    q = oracle_queries(trips["all"], base, root)
    _, ranked = search(q, index, 50, exclude=[index.id_of(t.reference) for t in trips["all"]])
    attrs_of = {r.name: r.attrs for r in records}
    gallery = [attrs_of[n] for n in index.names]
    o = {**recall_at_k(ranked, torch.tensor([index.id_of(t.target) for t in trips["all"]]), (1, 10, 50)),
         "attr@10": attribute_match_at_k(ranked, [t.wanted for t in trips["all"]], gallery, 10)}
    print(f"| oracle: mean train feature of items with the wanted attributes | {o['R@1']:.1f} | {o['R@10']:.1f} "
          f"| {o['R@50']:.1f} | {o['attr@10']:.1f} | | |")
    print(f"\nattr@10 ceiling (items with the wanted attributes are few): {a['attr@10_ceiling']:.1f}; "
          f"{len(trips['all'])} triplets ({len(trips['heldout'])} with held-out wordings); index {len(index)} images")


if __name__ == "__main__":
    main()

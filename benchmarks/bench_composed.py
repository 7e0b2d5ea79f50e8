"""The composed-retrieval results tables of the README: every fusion method on the catalogue test triplets.

    python3 benchmarks/bench_composed.py            # prints two markdown tables (a few minutes on 2 cores)
    python3 benchmarks/bench_composed.py --metadata # + the metadata path's rows, in a table of their own

Index = the 993 test images; triplets = triplets.generate(test images, seed 0, 500 per kind), with all
caption templates and with only the held-out ones (never seen in training). Each row of the first table is
what `python3 evaluate.py --task composed --combiner <method> [--text-encoder ...] [--phrasings heldout]`
prints; this script runs them in one process so the encoder and the index load once. Its last row is an
oracle, not a method: the mean train-split feature of the items satisfying each triplet's condition, to show
how far the lite image space lets any query go. The second table is attr@10 per triplet kind (a result counts
when it satisfies the triplet's condition, triplets.satisfies) beside its ceiling, with a mean row and the
mean as a share of the mean ceiling. --metadata adds the metadata path (cir.index.metadata: the caption's words
found in the catalogue's own names and attributes boost results, negated ones penalise them) on top of the
sum and the Combiner, reported apart from the learned path.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cir import encoders  # noqa: E402
from cir.catalog import triplets  # noqa: E402
from cir.combiner import load_method  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.evaluation.metrics import attribute_match_at_k, recall_at_k  # noqa: E402
from cir.evaluation.protocols import composed_catalog  # noqa: E402
from cir.extraction.local import ensure_index, index_name  # noqa: E402
from cir.index import Metadata, search  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

ROWS = [("image only", "image", "base"), ("text only", "text", "base"), ("sum (zero-shot baseline)", "sum", "base"),
        ("stage-1 text + sum", "sum", "stage1"), ("Combiner", "combiner", "base"),
        ("stage-1 text + Combiner", "combiner-stage1", "stage1")]


def oracle_queries(trips: list, encoder, root: Path, test_index) -> torch.Tensor:
    """Per triplet, the normalised mean train feature of the items satisfying its condition (the reference's
    own feature for the rare condition no train item satisfies)."""
    recs = catalog_images(root, "train")
    index = ensure_index(recs, encoder, Path("features") / index_name("catalog", "train"),
                         info={"dataset": "catalog", "split": "train", "data_root": str(root)})
    attrs = {r.name: r.attrs for r in recs}
    masks = triplets.ConditionMasks([attrs.get(n, {}) for n in index.names])
    mat, test_mat = index.matrix(), test_index.matrix()
    means: dict[tuple, torch.Tensor | None] = {}
    for t in trips:
        key = triplets.condition_key(t)
        if key not in means:
            rows = torch.from_numpy(masks.rows(key))
            means[key] = F.normalize(mat[rows].mean(0), dim=-1) if len(rows) else None
    out = []
    for t in trips:
        mean = means[triplets.condition_key(t)]
        out.append(mean if mean is not None else test_mat[test_index.id_of(t.reference)])
    return torch.stack(out)


def kinds_table(by_label: dict, oracle: dict) -> list[str]:
    """Markdown: attr@10 per kind of the chosen methods and the oracle, the ceiling, the held-out Combiner."""
    cols = ["image only", "sum (zero-shot baseline)", "Combiner", "stage-1 text + Combiner"]
    lines = ["| kind | queries | image only | sum | Combiner | stage-1 text + Combiner | oracle | ceiling "
             "| held-out wordings: Combiner |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    kinds = by_label["Combiner"]["all"]["kinds"]
    held = by_label["Combiner"]["heldout"]["kinds"]
    table = []
    for kind, m in kinds.items():
        row = [by_label[c]["all"]["kinds"][kind]["attr@10"] for c in cols]
        row += [oracle[kind], m["attr@10_ceiling"], held.get(kind, {}).get("attr@10", float("nan"))]
        table.append(row)
        lines.append(f"| {kind} | {m['queries']} | " + " | ".join(f"{v:.1f}" for v in row) + " |")
    mean = [sum(r[i] for r in table) / len(table) for i in range(len(table[0]))]
    share = [100 * v / mean[5] if mean[5] else 0.0 for v in mean]
    lines.append("| **mean over kinds** | | " + " | ".join(f"{v:.1f}" for v in mean) + " |")
    lines.append("| **% of mean ceiling** | | " + " | ".join(f"{v:.0f}%" for v in share) + " |")
    return lines


def metadata_table(sides: dict, index, records: list, trips: dict) -> list[str]:
    """Markdown: the metadata path on top of the sum and the Combiner, apart from the learned rows."""
    meta = Metadata.from_records(records, index.names)
    lines = [f"\nMetadata path (cir.index.metadata, weight {meta.weight}, max_df {meta.max_df}):\n",
             "| method | R@1 | R@10 | R@50 | attr@10 | held-out wordings: R@10 | attr@10 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label, spec, side in [r for r in ROWS if r[1] in ("sum", "combiner")]:
        method, combiner = load_method(spec)
        m = {p: composed_catalog(sides[side], index, records, trips[p], method, combiner, meta).metrics
             for p in trips}
        a, h = m["all"], m["heldout"]
        lines.append(f"| metadata path: {label} + metadata | {a['R@1']:.1f} | {a['R@10']:.1f} | {a['R@50']:.1f} "
                     f"| {a['attr@10']:.1f} | {h['R@10']:.1f} | {h['attr@10']:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", action="store_true", help="add the metadata path's rows, in their own table")
    args = p.parse_args(argv)
    setup_logging()
    root = resolve_data_root("catalog")
    records = catalog_images(root, "test")
    base = encoders.load("lite")
    sides = {"base": base, "stage1": base.with_text("stage1")}
    index = ensure_index(records, base, Path("features") / index_name("catalog", "test"),
                         info={"dataset": "catalog", "split": "test", "data_root": str(root)})
    trips = {p: triplets.generate(records, seed=0, per_kind=500, phrasings=p) for p in ("all", "heldout")}
    print("| method | R@1 | R@10 | R@50 | attr@10 | held-out wordings: R@10 | attr@10 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_label = {}
    for label, spec, side in ROWS:
        method, combiner = load_method(spec)
        m = {p: composed_catalog(sides[side], index, records, trips[p], method, combiner).metrics for p in trips}
        by_label[label] = m
        a, h = m["all"], m["heldout"]
        print(f"| {label} | {a['R@1']:.1f} | {a['R@10']:.1f} | {a['R@50']:.1f} | {a['attr@10']:.1f} "
              f"| {h['R@10']:.1f} | {h['attr@10']:.1f} |")

    everything = trips["all"]
    q = oracle_queries(everything, base, root, index)
    _, ranked = search(q, index, 50, exclude=[index.id_of(t.reference) for t in everything])
    attrs_of = {r.name: r.attrs for r in records}
    gallery = [attrs_of[n] for n in index.names]
    o = {**recall_at_k(ranked, torch.tensor([index.id_of(t.target) for t in everything]), (1, 10, 50)),
         "attr@10": attribute_match_at_k(ranked, [t.wanted for t in everything], gallery, 10,
                                         [t.unwanted for t in everything])}
    print(f"| oracle: mean train feature of items satisfying the condition | {o['R@1']:.1f} | {o['R@10']:.1f} "
          f"| {o['R@50']:.1f} | {o['attr@10']:.1f} | | |")
    if args.metadata:
        print("\n".join(metadata_table(sides, index, records, trips)))
    print(f"\nattr@10 ceiling (items satisfying the condition are few): {a['attr@10_ceiling']:.1f}; "
          f"{len(everything)} triplets ({len(trips['heldout'])} with held-out wordings); index {len(index)} images")

    oracle = {}
    for kind in dict.fromkeys(t.kind for t in everything):
        rows = [i for i, t in enumerate(everything) if t.kind == kind]
        oracle[kind] = attribute_match_at_k(ranked[rows], [everything[i].wanted for i in rows], gallery, 10,
                                            [everything[i].unwanted for i in rows])
    print("\nattr@10 (%) per triplet kind, all wordings unless marked:\n")
    print("\n".join(kinds_table(by_label, oracle)))
    print("\n".join(legacy_table(sides, index, records, everything, ranked, gallery)))


def legacy_table(sides: dict, index, records: list, everything: list, ranked: torch.Tensor,
                 gallery: list) -> list[str]:
    """Markdown: the kinds that existed before issue 11 alone (R@10, attr@10), and the oracle's attr@10 and
    share of its top 10 in the wanted colour there: what any fusion of these image features can reach."""
    rows = [i for i, t in enumerate(everything) if t.kind in triplets.LEGACY_KINDS]
    old = [everything[i] for i in rows]
    lines = [f"\nThe {len(old)} triplets of the first six kinds:\n", "| method | R@10 | attr@10 |", "|---|---:|---:|"]
    for label, spec, side in ROWS:
        method, combiner = load_method(spec)
        m = composed_catalog(sides[side], index, records, old, method, combiner).metrics
        lines.append(f"| {label} | {m['R@10']:.1f} | {m['attr@10']:.1f} |")
    top = ranked[rows][:, :10].tolist()
    colour = sum(gallery[j].get("baseColour") == t.wanted.get("baseColour") for t, r in zip(old, top) for j in r)
    o = attribute_match_at_k(ranked[rows], [t.wanted for t in old], gallery, 10, [t.unwanted for t in old])
    lines.append(f"| oracle (colour right in its top 10: {100 * colour / (10 * len(old)):.1f}%) | | {o:.1f} |")
    return lines


if __name__ == "__main__":
    main()

"""Edits mined from product names ("the same from nike", "make it navy blue"): composed search against the
whole wish typed as text ("nike t-shirt for men"), the baseline a shopper already has.

    python3 benchmarks/bench_name_edits.py                         # markdown tables (a minute or two on 2 cores)
    python3 benchmarks/bench_name_edits.py --combiner runs/x.safetensors
    python3 benchmarks/bench_name_edits.py --metadata              # + the metadata path's rows, apart
    python3 benchmarks/bench_name_edits.py --split val --sweep     # pick the metadata path's weight and max_df

Index = the 993 catalogue test images; edits = name_edits.mine(test images) with the words of the "train"
partition, with the held-out words (a quarter, by a stable hash: a model trained on train-word edits never saw
them), and with held-out words in held-out phrasings. Each row is evaluation.protocols.composed_name_edits:
R@10 of the target and name@10, the share of the top 10 satisfying the edit (the wanted type and gender, every
new word in the product name), the reference excluded. The per-family table is name@10 over all the words.

--metadata adds the metadata path (cir.index.metadata): the typed text's words that the split's own product
names and attributes hold boost the results having them, negated ones ("not puma") are penalised. It reads
the very names the metric reads, so its rows are reported apart, in their own tables, never mixed with the
learned path's. --sweep (run it on --split val) prints val numbers of the metadata path over a few weights and
document-frequency thresholds, for the Combiner and the sum, on all words and on catalogue triplets
(triplets.generate, 100 per kind: attr@10), and the best pair by the mean of name-edit R@10 and name@10
and triplet R@10 and attr@10: the defaults of cir.index.metadata.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cir import encoders  # noqa: E402
from cir.catalog import name_edits, triplets  # noqa: E402
from cir.combiner import load_method  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.encoders.texts import CachedTexts  # noqa: E402
from cir.evaluation.protocols import composed_catalog, composed_name_edits  # noqa: E402
from cir.evaluation.runs import load_text_side  # noqa: E402
from cir.extraction.local import ensure_index, index_name  # noqa: E402
from cir.index import Metadata  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

TEXT_TYPED = "the wish typed as text (text-typed)"
# label, fusion (load_method), what is typed; the text side is the one each Combiner was trained with.
ROWS = [("image only", "image", "caption"), ("caption alone as text", "text", "caption"),
        (TEXT_TYPED, "text", "wish"), ("sum", "sum", "caption"), ("Combiner", "combiner", "caption"),
        ("stage-1 text + Combiner", "combiner-stage1", "caption")]
SETS = {"train words": ("train", "all"), "held-out words": ("heldout", "all"),
        "held-out words, held-out phrasings": ("heldout", "heldout"), "all words": ("all", "all")}
# The metadata path on top of the learned one: its own rows, reported apart (metadata_tables).
META_PREFIX = "metadata path: "
META_ROWS = [(f"{META_PREFIX}image only + metadata", "image", "caption"),
             (f"{META_PREFIX}text-typed + metadata", "text", "wish"),
             (f"{META_PREFIX}sum + metadata", "sum", "caption"),
             (f"{META_PREFIX}Combiner + metadata", "combiner", "caption")]
SWEEP_WEIGHTS = (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
SWEEP_MAX_DF = (0.1, 0.25, 0.5)
SWEEP_TRIPLETS_PER_KIND = 100


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--combiner", nargs="*", default=[], metavar="PATH",
                   help="more Combiner checkpoints, one row each (with the text side each was trained with)")
    p.add_argument("--split", default="test", choices=("test", "val"),
                   help="the catalogue split searched and mined (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mining (default: 0)")
    p.add_argument("--per-word", type=int, default=20,
                   help="at most this many edits of the same new words (default: 20)")
    p.add_argument("--min-count", type=int, default=2,
                   help="a new word must be in at least this many product names of the split (default: 2)")
    p.add_argument("--metadata", action="store_true",
                   help="add the metadata path's rows (cir.index.metadata, default weight and max_df), apart")
    p.add_argument("--sweep", action="store_true",
                   help="print the metadata path over a few weights and max_df (pick them with --split val)")
    return p.parse_args(argv)


class Sides:
    """The text side each Combiner was trained with, loaded once, each caption encoded once (rows and sweep
    points share the encodings)."""

    def __init__(self, base):
        self.base, self.loaded = base, {}

    def of(self, combiner) -> CachedTexts:
        side = load_text_side(combiner, None)
        if side.record not in self.loaded:
            self.loaded[side.record] = CachedTexts(self.base.with_text(side), side=side.record)
        return self.loaded[side.record]


def run_rows(rows: list[tuple[str, str, str]], sides: Sides, records: list, index, edits: dict,
             metadata: Metadata | None = None) -> dict[str, dict]:
    """label -> edit set -> metrics, each row on the text side its Combiner was trained with."""
    out = {}
    for label, spec, text in rows:
        method, combiner = load_method(spec)
        out[label] = {name: composed_name_edits(sides.of(combiner), index, records, es, method, combiner, text,
                                                metadata).metrics for name, es in edits.items()}
    return out


def tables(by_label: dict[str, dict], edits: dict) -> list[str]:
    """Markdown: R@10 and name@10 per edit set, name@10 per family, composed as a share of text-typed."""
    shown = [s for s in SETS if s != "all words"]
    lines = ["| method | " + " | ".join(f"{s}: R@10 | name@10" for s in shown) + " |",
             "|---|" + "---:|---:|" * len(shown)]
    for label, m in by_label.items():
        lines.append(f"| {label} | " + " | ".join(f"{m[s]['R@10']:.1f} | {m[s]['name@10']:.1f}" for s in shown) + " |")
    ceil = by_label[TEXT_TYPED]
    lines.append("| name@10 ceiling | " + " | ".join(f" | {ceil[s]['name@10_ceiling']:.1f}" for s in shown) + " |")
    lines.append("\nEdits: " + ", ".join(f"{s} {len(edits[s])}" for s in SETS) + ".")
    typed = by_label[TEXT_TYPED]["held-out words"]
    for label in [lb for lb in by_label if lb not in ("image only", "caption alone as text", TEXT_TYPED)]:
        m = by_label[label]["held-out words"]
        lines.append(f"On held-out words, {label} is {_share(m['name@10'], typed['name@10'])} of text-typed "
                     f"name@10 and {_share(m['R@10'], typed['R@10'])} of its R@10.")
    fams = by_label[TEXT_TYPED]["all words"]["families"]
    lines += ["\nname@10 (%) per family of the new words, all words:\n",
              "| family | edits | " + " | ".join(by_label) + " | ceiling |",
              "|---|---:|" + "---:|" * (len(by_label) + 1)]
    for fam in name_edits.FAMILIES:
        if fam not in fams:
            lines.append(f"| {fam} | 0 |" + " |" * (len(by_label) + 1))
            continue
        cells = [f"{by_label[lb]['all words']['families'][fam]['name@10']:.1f}" for lb in by_label]
        lines.append(f"| {fam} | {fams[fam]['queries']} | " + " | ".join(cells)
                     + f" | {fams[fam]['name@10_ceiling']:.1f} |")
    return lines


def _share(value: float, of: float) -> str:
    return f"{100 * value / of:.0f}%" if of else "n/a"


def metadata_tables(meta: dict[str, dict], learned: dict[str, dict]) -> list[str]:
    """Markdown: the metadata path's rows apart, R@10 and name@10 per edit set beside the learned row they
    are added to, and name@10 per family over all the words."""
    shown = [s for s in SETS if s != "all words"]
    first = next(iter(meta.values()))["all words"]["metadata"]
    lines = [f"\nMetadata path (cir.index.metadata: weight {first['weight']}, max_df {first['max_df']}; the typed "
             f"text's words found in the split's names and attributes boost results, negated ones penalise them; "
             f"{first['understood']:.0f}% of the captions had such words, {first['avoiding']:.0f}% negated ones):\n",
             "| method | " + " | ".join(f"{s}: R@10 | name@10" for s in shown) + " |",
             "|---|" + "---:|---:|" * len(shown)]
    for label, m in meta.items():
        lines.append(f"| {label} | " + " | ".join(f"{m[s]['R@10']:.1f} | {m[s]['name@10']:.1f}" for s in shown) + " |")
    fams = learned[TEXT_TYPED]["all words"]["families"]
    lines += ["\nname@10 (%) per family, all words, metadata path:\n",
              "| family | edits | " + " | ".join(lb[len(META_PREFIX):] for lb in meta) + " | ceiling |",
              "|---|---:|" + "---:|" * (len(meta) + 1)]
    for fam in name_edits.FAMILIES:
        if fam in fams:
            cells = [f"{meta[lb]['all words']['families'][fam]['name@10']:.1f}" for lb in meta]
            lines.append(f"| {fam} | {fams[fam]['queries']} | " + " | ".join(cells)
                         + f" | {fams[fam]['name@10_ceiling']:.1f} |")
    return lines


def sweep(sides: Sides, records: list, index, edits: list, trips: list) -> list[str]:
    """Markdown: the metadata path over SWEEP_WEIGHTS x SWEEP_MAX_DF for the Combiner and the sum (name edits
    of all words: R@10, name@10; catalogue triplets: R@10, attr@10), weight 0 being the learned path alone;
    the best pair by the mean of the Combiner's four numbers."""
    full = Metadata.from_records(records, index.names)
    methods = [("Combiner", *load_method("combiner")), ("sum", *load_method("sum"))]
    lines = ["| weight | max_df | " + " | ".join(f"{n}: edits R@10 | name@10 | triplets R@10 | attr@10"
                                                for n, _, _ in methods) + " | Combiner mean |",
             "|---:|---:|" + "---:|" * (4 * len(methods) + 1)]
    best = None
    for w, df in [(0.0, 1.0)] + [(w, df) for df in SWEEP_MAX_DF for w in SWEEP_WEIGHTS]:
        meta = full.with_settings(weight=w, max_df=df) if w else None
        cells = []
        for _, method, combiner in methods:
            e = composed_name_edits(sides.of(combiner), index, records, edits, method, combiner, metadata=meta).metrics
            t = composed_catalog(sides.of(combiner), index, records, trips, method, combiner, meta).metrics
            cells += [e["R@10"], e["name@10"], t["R@10"], t["attr@10"]]
        mean = sum(cells[:4]) / 4
        if w and (best is None or mean > best[0]):
            best = (mean, w, df)
        lines.append(f"| {w} | {df if w else '-'} | " + " | ".join(f"{v:.1f}" for v in cells) + f" | {mean:.2f} |")
    lines.append(f"\nBest: weight {best[1]}, max_df {best[2]} (Combiner mean {best[0]:.2f}); {len(edits)} edits, "
                 f"{len(trips)} triplets, index {len(index)} images.")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logging()
    root = resolve_data_root("catalog")
    records = catalog_images(root, args.split)
    base = encoders.load("lite")
    index = ensure_index(records, base, Path("features") / index_name("catalog", args.split),
                         info={"dataset": "catalog", "split": args.split, "data_root": str(root)})
    usable = [r for r in records if r.name in index]
    edits = {name: name_edits.mine(usable, args.seed, args.per_word, words=w, phrasings=p, min_count=args.min_count)
             for name, (w, p) in SETS.items()}
    sides = Sides(base)
    if args.sweep:
        trips = triplets.generate(usable, seed=args.seed, per_kind=SWEEP_TRIPLETS_PER_KIND)
        print("\n".join(sweep(sides, usable, index, edits["all words"], trips)))
        return
    rows = ROWS + [(f"Combiner {Path(c).name}", c, "caption") for c in args.combiner]
    learned = run_rows(rows, sides, usable, index, edits)
    print("\n".join(tables(learned, edits)))
    if args.metadata:
        meta = run_rows(META_ROWS, sides, usable, index, edits, Metadata.from_records(usable, index.names))
        print("\n".join(metadata_tables(meta, learned)))


if __name__ == "__main__":
    main()

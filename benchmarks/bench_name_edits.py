"""Edits mined from product names ("the same from nike", "make it navy blue"): composed search against the
whole wish typed as text ("nike t-shirt for men"), the baseline a shopper already has.

    python3 benchmarks/bench_name_edits.py                         # markdown tables (a minute or two on 2 cores)
    python3 benchmarks/bench_name_edits.py --combiner runs/x.safetensors

Index = the 993 catalogue test images; edits = name_edits.mine(test images) with the words of the "train"
partition, with the held-out words (a quarter, by a stable hash: a model trained on train-word edits never saw
them), and with held-out words in held-out phrasings. Each row is evaluation.protocols.composed_name_edits:
R@10 of the target and name@10, the share of the top 10 satisfying the edit (the wanted type and gender, every
new word in the product name), the reference excluded. The per-family table is name@10 over all the words.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cir import encoders  # noqa: E402
from cir.catalog import name_edits  # noqa: E402
from cir.combiner import load_method  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.evaluation.protocols import composed_name_edits  # noqa: E402
from cir.evaluation.runs import load_text_side  # noqa: E402
from cir.extraction.local import ensure_index, index_name  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

TEXT_TYPED = "the wish typed as text (text-typed)"
# label, fusion (load_method), what is typed; the text side is the one each Combiner was trained with.
ROWS = [("image only", "image", "caption"), ("caption alone as text", "text", "caption"),
        (TEXT_TYPED, "text", "wish"), ("sum", "sum", "caption"), ("Combiner", "combiner", "caption"),
        ("stage-1 text + Combiner", "combiner-stage1", "caption")]
SETS = {"train words": ("train", "all"), "held-out words": ("heldout", "all"),
        "held-out words, held-out phrasings": ("heldout", "heldout"), "all words": ("all", "all")}


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
    return p.parse_args(argv)


def run_rows(rows: list[tuple[str, str, str]], base, records: list, index, edits: dict) -> dict[str, dict]:
    """label -> edit set -> metrics, each row on the text side its Combiner was trained with."""
    sides = {}
    out = {}
    for label, spec, text in rows:
        method, combiner = load_method(spec)
        side = load_text_side(combiner, None)
        if side.record not in sides:
            sides[side.record] = base.with_text(side)
        out[label] = {name: composed_name_edits(sides[side.record], index, records, es, method, combiner,
                                                text).metrics for name, es in edits.items()}
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
    rows = ROWS + [(f"Combiner {Path(c).name}", c, "caption") for c in args.combiner]
    print("\n".join(tables(run_rows(rows, base, usable, index, edits), edits)))


if __name__ == "__main__":
    main()

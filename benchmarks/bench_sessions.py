"""Simulated shoppers: multi-turn sessions on the catalogue test split, in the style of dialog-based
interactive retrieval (Guo et al., NeurIPS 2018), single-turn ranking against the session-aware one.

    python3 benchmarks/bench_sessions.py                 # 300 sessions, 5 turns, all and held-out wordings
    python3 benchmarks/bench_sessions.py --click attributes   # shoppers who judge attributes only
    python3 benchmarks/bench_sessions.py --sessions 200 --json

Index = the 993 test images (lite encoder, weights/combiner.safetensors, as bench_composed.py). A shopper
(seeded) has a target item and starts from a related one: the same article type, differing in two of
gender, colour and usage where the test split has such an item, else in one. Each turn the shopper says ONE
difference between the item shown (the start, then the item clicked) and the target, in their own words
(cir.catalog.phrasings: colour, gender, usage or type captions; "something similar" once none is left), with
every template ("all") or only the held-out ones (never seen in training). The search shows the top 10
(the reference excluded); success = the target among them. Otherwise the shopper clicks the shown item
closest to the target (most of the four attributes equal, then the highest feature cosine), which is the
next turn's reference.

Rows: image only, text only (the turn's words typed as a search), sum and the Combiner ranking each turn
alone (today's single-turn behaviour, the Combiner also with the metadata path as the API's default), and the
session-aware Combiner (cir.index.session: the API with `history`), with two ablations (earlier words
carried only; seen results demoted only). Reported: success within 1, 3 and 5 turns, the target's median
rank after each turn (a session that has succeeded keeps its last rank), and the share of sessions in which a
shown item had all four of the target's attributes. Prints markdown tables, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cir import encoders  # noqa: E402
from cir.catalog import phrasings as ph  # noqa: E402
from cir.combiner import compose, load_method  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.extraction.local import ensure_index, index_name  # noqa: E402
from cir.index import Facets, Metadata, search  # noqa: E402
from cir.index.session import SEEN_PENALTY, Turn, session_query  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

KEYS = ("gender", "articleType", "baseColour", "usage")
VARIED = ("gender", "baseColour", "usage")        # what a start item differs in (same article type)
SHOWN = 10


@dataclass(frozen=True)
class Method:
    label: str
    fusion: str                 # combiner.load_method spec: image, sum, combiner
    metadata: bool = False      # the metadata path on the current caption
    session: bool = False       # cir.index.session with the earlier turns
    carry: bool = True          # (session) earlier captions' words carried
    seen_penalty: float = SEEN_PENALTY


METHODS = (
    Method("image only", "image"),
    Method("text only (each turn's words typed as a search, API default)", "text", metadata=True),
    Method("sum (single turn)", "sum"),
    Method("Combiner (single turn)", "combiner"),
    Method("Combiner + metadata (single turn, API default)", "combiner", metadata=True),
    Method("session-aware Combiner (API with history)", "combiner", metadata=True, session=True),
    Method("  ablation: words carried only", "combiner", metadata=True, session=True, seen_penalty=0.0),
    Method("  ablation: seen demoted only", "combiner", metadata=True, session=True, carry=False),
)


@dataclass
class Shopper:
    target: int
    ref: int
    rng: random.Random
    turns: list[Turn] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)
    success: int | None = None          # the turn (1-based) the target was shown
    reached: bool = False               # a shown item had all the target's attributes


def make_sessions(attrs: list[dict], n: int, seed: int) -> list[tuple[int, int]]:
    """(target row, start row) pairs: a start of the same article type differing in 2 (else 1) of VARIED."""
    rng = random.Random(seed)
    ok = [i for i, a in enumerate(attrs) if a.get("gender") in ph.GENDER_WORDS and all(a.get(k) for k in KEYS)]
    by_type: dict[str, list[int]] = {}
    for i in ok:
        by_type.setdefault(attrs[i]["articleType"], []).append(i)
    out: list[tuple[int, int]] = []
    for target in rng.sample(ok, len(ok)):
        same = [j for j in by_type[attrs[target]["articleType"]] if j != target]
        diff = {j: sum(attrs[j][k] != attrs[target][k] for k in VARIED) for j in same}
        pool = [j for j in same if diff[j] >= 2] or [j for j in same if diff[j] == 1]
        if pool:
            out.append((target, rng.choice(pool)))
        if len(out) == n:
            break
    return out


def say(rng: random.Random, cur: dict, tgt: dict, phrasings: str) -> str:
    """One difference between the shown item and the target, in a shopper's words."""
    diffs = [k for k in KEYS if cur[k] != tgt[k]]
    if not diffs:
        return ph.similar_caption(rng, phrasings)
    k = rng.choice(diffs)
    if k == "baseColour":
        return ph.colour_caption(rng, tgt[k], cur[k], phrasings)
    if k == "gender":   # a shown Unisex item: worded against the other adult gender
        old = cur[k] if cur[k] in ph.GENDER_WORDS else "Women" if tgt[k] == "Men" else "Men"
        return ph.gender_caption(rng, tgt[k], old, phrasings)
    if k == "usage":
        return ph.usage_caption(rng, tgt[k], phrasings)
    return ph.type_caption(rng, tgt[k], cur[k], cur["baseColour"] == tgt["baseColour"], phrasings)


def click(shown: list[int], target: int, attrs: list[dict], feats: torch.Tensor, by: str = "features") -> int:
    """The shown item closest to the target: most attributes equal, then feature cosine ("features"), or
    then the first shown ("attributes": a shopper who judges attributes only, no oracle of the look)."""
    sims = ((feats[shown].float() @ feats[target].float()).tolist() if by == "features"
            else [-i for i in range(len(shown))])
    return max(zip(shown, sims), key=lambda x: (sum(attrs[x[0]][k] == attrs[target][k] for k in KEYS), x[1]))[0]


@dataclass
class World:
    """What every run shares: the test index, its attributes and metadata, the encoder."""

    index: object
    attrs: list[dict]
    meta: Metadata
    facets: Facets
    encoder: object
    click: str = "features"


def rank_turn(w: World, m: Method, s: Shopper, query: torch.Tensor, caption: str) -> list[int]:
    """The whole ranking of one shopper's turn under the method (the reference excluded)."""
    terms = w.meta.terms(caption) if m.metadata else None
    exclude = [[s.ref]]
    boost = terms
    if m.session:
        turns = s.turns if m.carry else [Turn(t.row, None, t.not_rows, t.seen) for t in s.turns]
        sq = session_query(query, w.index.features, turns, caption, exclude, w.meta, w.facets, terms,
                           seen_penalty=m.seen_penalty)
        query, exclude, boost = sq.query, sq.exclude, sq.boost
    _, ids = search(query, w.index, len(w.index), exclude=exclude, boost=boost)
    return ids[0].tolist()


def run(w: World, m: Method, pairs: list[tuple[int, int]], turns: int, phrasings: str, seed: int,
        shown_k: int = SHOWN) -> list[Shopper]:
    """Every session of one method, turn by turn (the captions of a turn composed in one batch)."""
    fusion, combiner = load_method(m.fusion)
    shoppers = [Shopper(t, r, random.Random(f"{seed}-{i}")) for i, (t, r) in enumerate(pairs)]
    for _ in range(turns):
        live = [s for s in shoppers if s.success is None]
        if not live:
            break
        captions = [say(s.rng, w.attrs[s.ref], w.attrs[s.target], phrasings) for s in live]
        refs = w.index.raw([s.ref for s in live])
        with torch.no_grad():
            queries = compose(w.encoder, refs, captions, fusion, combiner)
        for s, q, cap in zip(live, queries, captions):
            ranking = rank_turn(w, m, s, q[None], cap)
            s.ranks.append(ranking.index(s.target) + 1 if s.target in ranking else len(ranking) + 1)
            shown = ranking[:shown_k]
            s.reached |= any(all(w.attrs[j][k] == w.attrs[s.target][k] for k in KEYS) for j in shown)
            if s.target in shown:
                s.success = len(s.ranks)
                continue
            s.turns.append(Turn(s.ref, cap, (), tuple(shown)))
            s.ref = click(shown, s.target, w.attrs, w.index.features, w.click)
    return shoppers


def summary(shoppers: list[Shopper], turns: int) -> dict:
    n = len(shoppers)
    out = {f"success@{t}": round(100 * sum(s.success is not None and s.success <= t for s in shoppers) / n, 1)
           for t in (1, 3, 5) if t <= turns}
    for t in range(turns):
        out[f"median_rank_t{t + 1}"] = float(np.median([s.ranks[min(t, len(s.ranks) - 1)] for s in shoppers]))
    out["reached_attrs"] = round(100 * sum(s.reached for s in shoppers) / n, 1)
    return out


def table(results: dict, turns: int) -> list[str]:
    ranks = " | ".join(f"rank t{t + 1}" for t in range(turns))
    lines = [f"| method | wordings | success@1 | success@3 | success@5 | {ranks} | reached attrs |",
             "|---|---|---:|---:|---:|" + "---:|" * turns + "---:|"]
    for (label, phrasings), r in results.items():
        ranks = " | ".join(f"{r[f'median_rank_t{t + 1}']:g}" for t in range(turns))
        lines.append(f"| {label} | {phrasings} | {r.get('success@1', 0):.1f} | {r.get('success@3', 0):.1f} | "
                     f"{r.get('success@5', 0):.1f} | {ranks} | {r['reached_attrs']:.1f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=int, default=300, help="simulated shoppers (default 300)")
    p.add_argument("--click", default="features", choices=("features", "attributes"),
                   help="the shopper clicks the shown item with most of the target's attributes, then the one "
                        "most like it in features (default), or then the first shown")
    p.add_argument("--turns", type=int, default=5, help="turns per session (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--phrasings", default="all,heldout", help="caption templates: all, heldout (comma list)")
    p.add_argument("--shown", type=int, default=SHOWN,
                   help=f"results the shopper sees each turn; success is the target among them (default {SHOWN}; "
                        "a phone screen shows about 4)")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = p.parse_args(argv)
    setup_logging()
    t0 = time.perf_counter()
    root = resolve_data_root("catalog")
    records = catalog_images(root, "test")
    encoder = encoders.load("lite")
    index = ensure_index(records, encoder, Path("features") / index_name("catalog", "test"),
                         info={"dataset": "catalog", "split": "test", "data_root": str(root)})
    by_name = {r.name: r.attrs for r in records}
    attrs = [by_name.get(n, {}) for n in index.names]
    w = World(index, attrs, Metadata.from_records(records, index.names), Facets.from_records(records, index.names),
              encoder, args.click)
    pairs = make_sessions(attrs, args.sessions, args.seed)
    results = {}
    for phrasings in args.phrasings.split(","):
        for m in METHODS:
            results[(m.label, phrasings)] = summary(run(w, m, pairs, args.turns, phrasings, args.seed, args.shown),
                                                        args.turns)
    print(f"\n{len(pairs)} sessions, {args.turns} turns, {args.shown} shown, seed {args.seed}, click by {args.click}, "
          f"catalogue test split "
          f"({len(index)} images), lite encoder, {time.perf_counter() - t0:.0f} s\n")
    print("\n".join(table(results, args.turns)))
    if args.json:
        print(json.dumps({f"{k[0].strip()} [{k[1]}]": v for k, v in results.items()}))


if __name__ == "__main__":
    main()

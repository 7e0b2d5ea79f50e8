"""Command-line search over an extracted index (the web demo's queries, without the web).

    python query.py "a red casual t-shirt for men"            # text -> image
    python query.py --image my_photo.jpg                       # image -> image (any photo)
    python query.py --ref 15970                                # image -> image from an index image
    python query.py --ref 15970 "make it for women"            # composed: the reference changed as the caption says
    python query.py --ref 15970 "in red" --filter gender=Women --filter baseColour=Red --filter baseColour=Maroon
    python query.py --session s.json --ref 15970 "make it for women"   # a session: each query appends a turn
    python query.py --session s.json --ref 21380 "in red" --not 1164   # ...the next turn (1164: not wanted)

Composed queries go through the shipped Combiner (--combiner: combiner, combiner-stage1, sum or a checkpoint)
and the metadata path (--no-metadata: the learned ranking alone), as the API's composed mode does. A session
file holds the turns so far (the API's `history`: reference, caption, feedback with the results seen and
those marked not wanted), oldest first; the search is ranked by cir.index.session as the API ranks it. The
catalogue index is extracted first if it is missing (about two minutes on a small CPU).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import torch

from cir import encoders
from cir.cli.common import add_data_root, add_device, add_encoder, add_features, image_file, index_store, positive_int
from cir.combiner import compose, load_method
from cir.data import DATASETS
from cir.extraction import open_dataset_index
from cir.images import open_image
from cir.index import Facets, Metadata, search
from cir.index.session import MAX_TURNS, Turn, session_query
from cir.utils import run_cli, setup_logging, write_json


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("text", nargs="?", default=None,
                   help="a text query, or with --ref the caption of a composed query (how the wanted item differs)")
    p.add_argument("--image", default=None, type=image_file,
                   help="path of a query image (any photo; checked before the index is opened or extracted)")
    p.add_argument("--ref", default=None, help="name of an index image to query from (catalogue: the product id)")
    p.add_argument("--combiner", default="combiner",
                   help="composed fusion: combiner, combiner-stage1, sum or a Combiner checkpoint (default combiner)")
    p.add_argument("--no-metadata", dest="metadata", action="store_false",
                   help="leave out the metadata path (the caption's words found in the catalogue's attributes)")
    p.add_argument("--filter", action="append", default=[], metavar="ATTR=VALUE",
                   help="keep only items with this attribute value (repeatable: AND across attributes, OR within one)")
    p.add_argument("--session", default=None, type=Path,
                   help="a JSON file of the session's turns (created if missing); this query is appended to it")
    p.add_argument("--not", dest="nots", action="append", default=[], metavar="ID",
                   help="with --session: a result of the previous turn that is not wanted (repeatable)")
    p.add_argument("--dataset", default="catalog", choices=DATASETS, help="dataset layout")
    add_data_root(p)
    p.add_argument("--split", default="all", help="split whose images form the index (catalog: all/train/val/test)")
    add_encoder(p, note="; bof answers --image and --ref only")
    add_features(p)
    p.add_argument("-k", type=positive_int, default=10, help="number of results")
    add_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def _filters(items: list[str]) -> dict[str, list[str]]:
    """--filter ATTR=VALUE ... as {attr: [values]}."""
    out: dict[str, list[str]] = {}
    for item in items:
        attr, sep, value = item.partition("=")
        if not sep or not attr.strip() or not value.strip():
            raise ValueError(f"--filter takes ATTR=VALUE (e.g. gender=Women), not {item!r}")
        out.setdefault(attr.strip(), []).append(value.strip())
    return out


def _read_session(path: Path | None) -> list[dict]:
    """The session file's turns (the API's history), [] when it does not exist yet."""
    if path is None or not path.exists():
        return []
    try:
        turns = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not a session file (JSON list of turns): {e}") from None
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ValueError(f"{path} is not a session file: it must hold a JSON list of turns")
    return turns


def _turns(raw: list[dict], index: Any) -> list[Turn]:
    """Session-file turns as cir.index.session.Turn (ids no longer in the index are skipped)."""
    def rows(ids) -> tuple[int, ...]:
        return tuple(index.id_of(i) for i in ids or () if i in index)
    out = []
    for t in raw[-MAX_TURNS:]:
        fb = t.get("feedback") or {}
        ref = t.get("reference")
        out.append(Turn(index.id_of(ref) if ref in index else None, t.get("caption"), rows(fb.get("not")),
                        rows(fb.get("seen"))))
    return out


def _query(args: argparse.Namespace, enc: Any, index: Any) -> tuple[torch.Tensor, list[int] | None]:
    """The query vector and the rows to exclude (the reference), by what was given."""
    if args.ref is not None:
        if args.ref not in index:
            raise ValueError(f"{args.ref!r} is not in the index")
        row = index.id_of(args.ref)
        if args.text is None:
            return index.features[row:row + 1].float(), [row]
        method, combiner = load_method(args.combiner)
        return compose(enc, index.raw([row]), [args.text], method, combiner), [row]
    if args.text is not None:
        return enc.encode_texts([args.text]), None
    try:
        return enc.encode_images([open_image(args.image)]), None
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read image {args.image}: {e}") from None


def main(argv: Sequence[str] | None = None) -> int:
    p = _parser()
    args = p.parse_args(argv)
    setup_logging()
    if args.ref is None and sum(x is not None for x in (args.text, args.image)) != 1:
        p.error("give one of: a text query, --image PATH, --ref NAME, or --ref NAME with a caption")
    if args.ref is not None and args.image is not None:
        p.error("give either --ref or --image, not both")
    if args.text is not None and not args.text.strip():
        p.error("the text query is empty")
    if args.nots and args.session is None:
        p.error("--not marks a result of the previous turn of a --session")
    filters, raw_turns = _filters(args.filter), _read_session(args.session)
    enc = encoders.load(args.encoder, args.device)
    split = None if args.dataset == "folder" else args.split
    ds = open_dataset_index(enc, args.dataset, split, index_store(args), args.data_root)
    index = ds.index
    meta = Metadata.from_records(ds.records, index.names)
    facets = Facets.from_records(ds.records, index.names)
    keep = facets.select(filters) if filters else None     # FilterError (a ValueError) names unknown values
    if args.nots and raw_turns:
        fb = raw_turns[-1].setdefault("feedback", {})
        fb["not"] = list(dict.fromkeys([*fb.get("not", []), *args.nots]))
    q, exclude = _query(args, enc, index)
    terms = meta.terms(args.text) if args.metadata and args.text is not None else None
    sq = session_query(q, index.features, _turns(raw_turns, index), args.text,
                       [exclude] if exclude else None, meta, facets, terms)
    scores, ids = search(sq.query, index, args.k, exclude=sq.exclude, boost=sq.boost, filters=keep)
    _print(args, ds, index, scores, ids, sq)
    if args.session is not None:
        turn = {"reference": args.ref, "caption": args.text,
                "feedback": {"seen": [index.names[j] for j in ids[0].tolist()]}}
        write_json(args.session, [*raw_turns, {k: v for k, v in turn.items() if v is not None}])
    return 0


def _print(args: argparse.Namespace, ds: Any, index: Any, scores: torch.Tensor, ids: torch.Tensor, sq: Any) -> None:
    attrs = {r.name: r.attrs for r in ds.records}
    hits = [{"rank": i + 1, "name": index.names[j], "score": round(s, 4),
             "title": attrs.get(index.names[j], {}).get("productDisplayName", "")}
            for i, (s, j) in enumerate(zip(scores[0].tolist(), ids[0].tolist()))]
    understood = sq.terms.words if sq.terms is not None else None
    if args.json:
        print(json.dumps({"query": args.text or args.image or args.ref, "reference": args.ref,
                          "understood": understood, "results": hits}))
        return
    if understood and (understood["boost"] or understood["avoid"]):
        print(f"understood: {understood}", file=sys.stderr)
    for h in hits:
        print(f"{h['rank']:>3}  {h['score']:.3f}  {h['name']:<12} {h['title']}")


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())

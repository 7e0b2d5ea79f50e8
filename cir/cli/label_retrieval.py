"""`label_retrieval.py`: label queries over clusters of an encoder's features; its help is
cir.evaluation.label_retrieval's description."""
from __future__ import annotations

import argparse
import json
from typing import Sequence

from cir import encoders
from cir.cli.common import add_data_root, add_encoder, add_features, add_verbose, index_store, positive_int
from cir.data import catalog_images, resolve_data_root
from cir.evaluation import label_retrieval
from cir.evaluation.label_retrieval import LabelClusters, index_folder, label_precision, sample_records
from cir.utils import run_cli, setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=label_retrieval.__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_encoder(p, default="bof", note="; its features are clustered")
    add_data_root(p)
    add_features(p)
    p.add_argument("--label", default="articleType", help="styles.csv column used as the label")
    p.add_argument("--split", default="test", help="split searched by the label queries (train names clusters)")
    p.add_argument("--train-images", type=positive_int, default=None,
                   help="name the clusters from a sample of this many train images (default: all of them)")
    p.add_argument("--query", action="append", default=[], help="a label to retrieve (repeatable)")
    p.add_argument("-k", type=positive_int, default=10, help="results shown per query")
    p.add_argument("--evaluate", action="store_true", help="also print label-query precision over every label")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    add_verbose(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.split == "train":
        raise ValueError("--split is the searched split; the train split names the clusters: use val or test")
    root = resolve_data_root("catalog", args.data_root)
    encoder = encoders.load(args.encoder)
    sets, store = {}, index_store(args)
    for split, n in (("train", args.train_images), (args.split, None)):
        recs = sample_records(catalog_images(root, split), n)
        idx = store.open(recs, encoder, index_folder(split, args.encoder, n))
        by_name = {r.name: r.attrs.get(args.label, "") for r in recs}
        sets[split] = (idx.matrix().float().numpy(), [by_name[n] for n in idx.names], idx.names)
    feats, labels, _ = sets["train"]
    clusters = LabelClusters.fit(feats, labels, seed=args.seed)
    test_feats, test_labels, test_names = sets[args.split]
    out = {"encoder": encoder.name, "label": args.label, "clusters": len(clusters.names),
           "results": {q: [test_names[i] for i in clusters.query(q, test_feats, k=args.k)] for q in args.query}}
    if args.evaluate:
        out["evaluation"] = label_precision(clusters, test_feats, test_labels, sorted(set(test_labels)), args.k)
    print(json.dumps(out, indent=1))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())

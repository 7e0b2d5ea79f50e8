"""The index command line: `python3 -m cir.index check|build|load`.

    python3 -m cir.index check --features features/catalog-all             # validate + verify, print a summary
    python3 -m cir.index build --features features/catalog-all --backend faiss   # build/refresh the faiss index
    python3 -m cir.index load --features features/catalog-all --to milvus:http://host:19530   # fill Milvus

Each prints one JSON line; a bad folder or option is one clear error line and exit code 2 (cir.utils.run_cli).
"""
from __future__ import annotations

import argparse
import json
import time
from typing import Sequence

from cir.index import __doc__ as _PACKAGE_DOC
from cir.index.backends.faiss import FaissBackend
from cir.index.backends.milvus import load_into_milvus
from cir.index.feature_index import FeatureIndex, load_index
from cir.index.registry import open_backend, parse_backend
from cir.utils import run_cli, setup_logging


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m cir.index", description=f"{__doc__}\n{_PACKAGE_DOC}",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="{check,build,load}")
    c = sub.add_parser("check", help="load a feature folder, verify its checksums in full, print a JSON summary")
    c.add_argument("--features", required=True, metavar="DIR", help="index folder written by extract_features.py")
    c.add_argument("--backend", default="exact", metavar="SPEC",
                   help="also open this backend and report its health (exact, faiss..., milvus...)")
    c.add_argument("--require-verified", action="store_true",
                   help="fail (exit code 2) when the manifest records no checksums, instead of reporting it")
    b = sub.add_parser("build", help="build (or refresh, if the features changed) the saved faiss index; "
                                     "prints recall@10 against exact and the build time")
    b.add_argument("--features", required=True, metavar="DIR", help="index folder written by extract_features.py")
    b.add_argument("--backend", default="faiss", metavar="SPEC",
                   help="faiss, faiss:hnsw?M=32&efConstruction=128, faiss:ivfpq?nlist=4096&m=32 ... (default: "
                        "faiss, HNSW or IVF-PQ by size)")
    b.add_argument("--force", action="store_true", help="rebuild even if the saved index is up to date")
    ld = sub.add_parser("load", help="copy a feature folder into a Milvus collection (idempotent, resumable)")
    ld.add_argument("--features", required=True, metavar="DIR", help="index folder written by extract_features.py")
    ld.add_argument("--to", default="milvus", metavar="URI",
                    help="milvus (milvus-lite in DIR/milvus.db), milvus:FILE.db, or milvus:http://host:19530"
                         "[?token=...&db=...]; a bare FILE.db or http:// URI works too (default: milvus)")
    ld.add_argument("--batch", type=int, default=10_000, help="rows per insert request (default 10000)")
    ld.add_argument("--index-type", default="HNSW", choices=["HNSW", "AUTOINDEX", "FLAT", "IVF_FLAT"],
                    help="Milvus vector index built on the collection, inner-product metric (default HNSW)")
    ld.add_argument("--replace", action="store_true", help="drop the collection first and load it afresh")
    ld.add_argument("--no-progress", action="store_true", help="no progress bar")
    for s in (c, b, ld):
        s.add_argument("--verbose", action="store_true", help="debug logging")
    return p


def _check(index: FeatureIndex, args: argparse.Namespace, seconds: float) -> dict:
    """The summary of a folder load_index checked and verified in full (`seconds`: what that took)."""
    out = {**index.summary(), "load_seconds": round(seconds, 3)}
    if not index.verified:
        out["unverified_reason"] = ("the manifest records no checksums (extracted by an older version); "
                                    "extract it again with --overwrite to record them")
        if args.require_verified:
            raise ValueError(f"{index.path}: {out['unverified_reason']}")
    if parse_backend(args.backend).kind != "exact":
        out["backend"] = open_backend(index, args.backend).health()
    return out


def _build(index: FeatureIndex, args: argparse.Namespace) -> dict:
    backend_spec = parse_backend(args.backend)
    if backend_spec.kind != "faiss":
        raise ValueError(f"build makes faiss indexes; for Milvus use `python3 -m cir.index load --to {args.backend}`")
    backend = FaissBackend.open(index, backend_spec, rebuild=args.force)
    return {"features": str(index.path), "backend": backend.label, **{k: backend.meta.get(k) for k in (
        "kind", "file", "rows", "build_seconds", "recall@10", "recall_target", "search_params", "tuning")}}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    t0 = time.perf_counter()
    index = load_index(args.features)   # checked and verified against the manifest's checksums in full
    if args.command == "check":
        out = _check(index, args, time.perf_counter() - t0)
    elif args.command == "build":
        out = _build(index, args)
    else:
        if args.batch < 1:
            raise ValueError("--batch must be at least 1")
        out = load_into_milvus(index, args.to, args.batch, args.index_type, progress=not args.no_progress,
                               replace=args.replace)
    print(json.dumps(out))
    return 0


def cli() -> int:
    """The console command: a mistake the user can fix is one error line and exit code 2, not a traceback."""
    return run_cli(main)


if __name__ == "__main__":
    raise SystemExit(cli())

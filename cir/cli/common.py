"""Flags several commands share, each declared once with one help text: where the data is, which encoder on
which device, where feature folders are and how a missing one is extracted, logging. (The demo's own options
are declared in cir.serving.settings, which makes both its flags and its CIR_* variables.)"""
from __future__ import annotations

import argparse
from pathlib import Path

from cir.extraction.local import IndexStore

DATA_ROOT_HELP = ("dataset folder (default: $CIR_DATA_ROOT or ../shared/data, descending into the dataset's usual "
                  "subfolder)")
ENCODER_HELP = "encoder name: lite, bof (classical, image-only), hf:<id or dir>, openai:<model>"
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."


def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)


def add_encoder(p: argparse.ArgumentParser, default: str = "lite", note: str = "") -> None:
    """--encoder; `note` says what this command does with it (e.g. which kinds it accepts)."""
    p.add_argument("--encoder", default=default, help=f"{ENCODER_HELP} (default: {default}){note}")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_features(p: argparse.ArgumentParser, flag: str = "--features") -> None:
    """The features root and how a missing or stale index under it is extracted (batch size, workers)."""
    p.add_argument(flag, default="features",
                   help="features root: each index is the folder <root>/<dataset>[-<category>]-<split>, extracted "
                        "there when it is missing or stale")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch when extracting")
    p.add_argument("--workers", type=int, default=None,
                   help="decoding workers when extracting (default: min(4, cores))")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def index_store(args: argparse.Namespace) -> IndexStore:
    """The IndexStore the flags of add_features name."""
    return IndexStore(Path(args.features), args.batch_size, args.workers)

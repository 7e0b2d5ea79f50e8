"""Flags several commands share, each declared once with one help text: where the data is, which encoder on
which device, where feature folders are and how a missing one is extracted, logging. (The demo's own options
are declared in cir.serving.settings, which makes both its flags and its CIR_* variables.)

And the argument types that check a value when the command line is parsed, so that a hostile or mistaken
value is one line and exit code 2 from argparse, before any model or data is loaded: `positive_int`,
`non_negative_int`, `target_ratio`, `device`, `image_file` (an existing, non-empty regular file: never a FIFO,
which would block), `output_file` (not a directory) and `combiner_choice`.
"""
from __future__ import annotations

import argparse
import os
import stat
from pathlib import Path

from cir.cli.original import aliases, openai_name
from cir.combiner import SHIPPED_COMBINERS
from cir.encoders.preprocess import DEFAULT_TARGET_RATIO, PREPROCESS_MODES
from cir.extraction.local import IndexStore
from cir.utils import check_device

DATA_ROOT_HELP = ("dataset folder (default: $CIR_DATA_ROOT or ../shared/data, descending into the dataset's usual "
                  "subfolder)")
ENCODER_HELP = "encoder name: lite, bof (classical, image-only), hf:<id or dir>, openai:<model>"
DEVICE_HELP = "auto (CUDA when present), cpu, cuda, cuda:1, ..."


# ----------------------------------------------------------------------------------------------- argument types

def _int_at_least(value: str, least: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {value!r}") from None
    if n < least:
        raise argparse.ArgumentTypeError(f"must be {least} or more, not {n}")
    return n


def positive_int(value: str) -> int:
    """A whole number of 1 or more (epochs, batch sizes, shard sizes, k)."""
    return _int_at_least(value, 1)


def non_negative_int(value: str) -> int:
    """A whole number of 0 or more (worker counts, layer counts)."""
    return _int_at_least(value, 0)


def target_ratio(value: str) -> float:
    """TargetPad's ratio: a number of 1 or more (under 1 every image would be padded on its long side too)."""
    try:
        r = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, not {value!r}") from None
    if not r >= 1:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return r


def device(value: str) -> str:
    """A device this machine has (utils.check_device): `--device cuda` without CUDA fails here, not mid-run."""
    try:
        return check_device(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def image_file(value: str) -> str:
    """An existing, non-empty regular file (symlinks followed); checked by stat, so a FIFO is never opened."""
    try:
        st = os.stat(value)
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {value}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, a device or a socket)"
        raise argparse.ArgumentTypeError(f"{value} is {kind}; give an image file")
    if st.st_size == 0:
        raise argparse.ArgumentTypeError(f"{value} is empty (0 bytes); give an image file")
    return value


def output_file(value: str) -> str:
    """A file path to write: not an existing directory, in a folder (made if missing) that is not a file."""
    path = Path(value)
    if value.endswith(os.sep) or path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a directory; give a file path to write")
    parent = next((p for p in path.absolute().parents if os.path.lexists(p)), None)
    if parent is not None and not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {value}: {parent} is not a directory")
    return value


COMBINE_NAMES = ("sum", "image", "text", *SHIPPED_COMBINERS)


def combiner_choice(value: str) -> str:
    """A fusion: sum, image, text, a shipped Combiner's name or a checkpoint file (read when it is loaded)."""
    if value in COMBINE_NAMES:
        return value
    if not os.path.lexists(value):
        raise argparse.ArgumentTypeError(f"unknown combiner {value!r}: give {', '.join(COMBINE_NAMES)} or a "
                                         "checkpoint file")
    if not os.path.isfile(value):
        raise argparse.ArgumentTypeError(f"combiner checkpoint {value} is not a regular file")
    return value


# ----------------------------------------------------------------------------------------------- flags

def add_data_root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default=None, help=DATA_ROOT_HELP)


def add_encoder(p: argparse.ArgumentParser, default: str = "lite", note: str = "",
                original: tuple[str, ...] = ()) -> None:
    """--encoder; `note` says what this command does with it (e.g. which kinds it accepts). `original`: the
    CLIP4Cir scripts this command stands for, whose --clip-model-name NAME it takes as --encoder openai:NAME."""
    p.add_argument("--encoder", default=default, help=f"{ENCODER_HELP} (default: {default}){note}")
    for name in aliases("--encoder", *original) if original else []:
        p.add_argument(name, dest="encoder", type=openai_name, default=argparse.SUPPRESS, metavar="NAME",
                       help="the original scripts' flag: --encoder openai:NAME")


def add_transform(p: argparse.ArgumentParser, default_note: str = "the encoder's own",
                  extra: tuple[str, ...] = ()) -> None:
    """--transform and --target-ratio (CLIP4Cir's flags of the same names), declared once for training,
    evaluation and extraction; `extra` names older spellings of --transform this command keeps."""
    p.add_argument("--transform", *extra, default=None, choices=PREPROCESS_MODES,
                   help="image preprocessing: targetpad (pad the short side when long/short >= --target-ratio), "
                        "squarepad (pad to a square), clip (CLIP's own: resize the short side, centre-crop), resize "
                        f"(squash to a square); default: {default_note}")
    p.add_argument("--target-ratio", type=target_ratio, default=None,
                   help=f"targetpad's aspect ratio (default {DEFAULT_TARGET_RATIO}, CLIP4Cir's)")


def add_dtype(p: argparse.ArgumentParser, what: str) -> None:
    """--dtype: how `what` is stored."""
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"],
                   help=f"storage of {what}: float16 (default: half the size; feature rows exact to ~1e-3) or "
                        "float32 (exactly the numbers computed)")


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", type=device, help=DEVICE_HELP)


def add_features(p: argparse.ArgumentParser, flag: str = "--features", batch_default: int | None = 64,
                 original: tuple[str, ...] = (), root_default: str | None = "features",
                 root_note: str = "") -> None:
    """The features root and how a missing or stale index under it is extracted (batch size, workers);
    `original`: the CLIP4Cir scripts this command stands for (their --clip-bs is --batch-size); `root_note`
    says what a None `root_default` means."""
    p.add_argument(flag, default=root_default,
                   help="features root: each index is the folder <root>/<dataset>[-<category>]-<split>, extracted "
                        f"there when it is missing or stale (default: {root_note or root_default})")
    p.add_argument("--batch-size", *aliases("--batch-size", *original) if original else [], type=positive_int,
                   default=batch_default, dest="batch_size",
                   help="images per encoder batch when extracting (the original scripts' --clip-bs; not their "
                        f"--batch-size, which is --batch here); default: {batch_default or 'from --preset'}")
    p.add_argument("--workers", type=non_negative_int, default=None,
                   help="decoding workers when extracting (default: min(4, cores))")


def add_verbose(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def index_store(args: argparse.Namespace) -> IndexStore:
    """The IndexStore the flags of add_features name."""
    return IndexStore(Path(args.features), args.batch_size, args.workers, getattr(args, "dtype", "float16"))

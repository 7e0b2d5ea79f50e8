"""Small shared helpers: device choice, atomic file writes, logging set-up, hashing.

Everything that writes a file the user cares about (feature files, checkpoints, manifests) goes through
`atomic_write`, so a crash or a kill never leaves a half-written file behind under the final name.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

__all__ = ["atomic_write", "check_device", "check_finite", "config_from_dict", "content_key", "get_device",
           "load_tensors", "run_cli", "save_checkpoint", "save_tensors", "setup_logging", "sha256_file", "write_json"]


def get_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_device(value: str) -> str:
    """A device this machine can use, as given ('auto', 'cpu', 'cuda', 'cuda:1', 'mps'); ValueError saying
    why not otherwise (an unknown name, CUDA or MPS absent, a GPU index past the last one)."""
    if value == "auto":
        return value
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"unknown device {value!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {value!r}: CUDA is not available on this machine; use auto or cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {value!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {value!r}: MPS is not available on this machine; use auto or cpu")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {value!r}: use auto, cpu, cuda, cuda:N or mps")
    return value


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    The rename is atomic on POSIX, so readers see either the old file or the complete new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the final file should get the usual mode
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as pretty, key-sorted JSON (stable bytes for identical content)."""
    with atomic_write(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor],
                 metadata: dict[str, str] | None = None) -> None:
    """Atomically save tensors as safetensors."""

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    with atomic_write(path) as f:
        f.write(data)


def load_tensors(path: str | os.PathLike, what: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, on CPU, every one checked finite.

    FileNotFoundError when it is missing; ValueError naming the file when it is not a regular file, cannot be
    read as safetensors (truncated, garbage: safetensors' SafetensorError) or holds NaN or infinite values.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} {path} not found")
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a regular file")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} {path} is damaged: not a readable safetensors file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
    check_finite(tensors, f"{what} {path}")
    return tensors


def check_finite(tensors: Mapping[str, torch.Tensor], what: str) -> None:
    """ValueError naming `what` and the tensor when a floating-point tensor holds NaN or infinite values
    (a damaged file can have a valid header and garbage numbers: served, it would rank by NaN)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} is damaged: its tensor {name!r} holds NaN or infinite values")


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], config: Any, kind: str) -> None:
    """Weights as safetensors at `path`, the dataclass `config` as JSON beside it (same stem, .json)."""
    path = Path(path)
    save_tensors(path, tensors, metadata={"format": "pt", "kind": kind})
    write_json(path.with_suffix(".json"), asdict(config))


def config_from_dict(cls: type, d: dict) -> Any:
    """Build a config dataclass from a dict, ignoring keys it does not know (files from other versions)."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in known})


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts: names cache and resume files by everything they depend on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def run_cli(main: Callable[[], int]) -> int:
    """Run a command-line entry point: user errors become one clear line and exit code 2, not a traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        logging.getLogger("cli").error("interrupted; run the same command again to resume")
        return 130
    except (FileNotFoundError, NotADirectoryError, PermissionError, ValueError) as e:
        # Missing paths, malformed annotation files, bad names or options: the message says what to fix.
        logging.getLogger("cli").error("%s", e)
        return 2

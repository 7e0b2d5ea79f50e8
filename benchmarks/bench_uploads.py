"""Memory an upload costs the server: peak RSS and Python allocations while UploadStore.add runs, 1 and 4 at once.

    python3 benchmarks/bench_uploads.py [--before f085ebd] [--cases png-40mp,jpeg-24mp] [--concurrent 1,4]

Generates the images once (a 155 KB PNG of 8000 x 5000, phone-like JPEGs of 12, 24 and 48 MP, a progressive
24 MP JPEG, a phone screenshot), then, for each image and concurrency, runs a fresh process that loads the
lite encoder, builds an UploadStore in a temporary folder, stores one small upload (warm-up) and measures
while N threads add the image at the same moment:

    peak RSS    resident memory above the level just before: the kernel's high-water mark (ru_maxrss) when
                the uploads raised it, else sampled every millisecond (what the decoder, the copies and the
                re-encode cost: PIL's pixel buffers are not Python objects)
    tracemalloc peak of Python allocations meanwhile (the request bytes and buffers)

"before" is the UploadStore of git revision --before (its own 40 MP limit), loaded from `git show`; "after"
is this tree's, with its default limit (25 MP) and with the old 40 MP limit (the decoder's share alone).
Prints a markdown table for README.md, the command line and one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import resource  # noqa: E402
import tracemalloc  # noqa: E402

from cir import encoders  # noqa: E402
from cir.paths import REPO_DIR  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench_uploads")
MB = 1024 * 1024
CASES = {  # name -> (format, width, height, progressive)
    "png-40mp-flat": ("PNG", 8000, 5000, False),    # the attack: 155 KB on the wire, 40 MP decoded
    "jpeg-12mp": ("JPEG", 4032, 3024, False),       # a phone's usual photo
    "jpeg-24mp": ("JPEG", 5712, 4284, False),       # a recent iPhone Pro's default photo
    "jpeg-24mp-progressive": ("JPEG", 5712, 4284, True),
    "jpeg-48mp": ("JPEG", 8064, 6048, False),       # a full-resolution (opt-in) phone photo
    "png-screenshot": ("PNG", 1290, 2796, False),
}
# store -> its pixel limit (None: its default); after-50mp shows what admitting 48-50 MP photos would cost
IMPLS = {"before": None, "after": None, "after-40mp": 40_000_000, "after-50mp": 50_000_000}


def make_image(name: str, out: Path) -> Path:
    """The test image of `name`: photos get texture (so they compress like photos), the PNG attack is flat."""
    import numpy as np
    from PIL import Image, ImageDraw
    fmt, w, h, progressive = CASES[name]
    path = out / f"{name}.{fmt.lower()}"
    if path.exists():
        return path
    if name == "png-40mp-flat":
        im = Image.new("RGB", (w, h), (240, 240, 235))
        d = ImageDraw.Draw(im)
        for i in range(40):
            d.rectangle((i * 190, i * 110, i * 190 + 300, i * 110 + 200), fill=(i * 6, 80, 200 - i * 4))
        im.save(path, "PNG", optimize=True)
    else:
        rng = np.random.default_rng(0)
        base = rng.integers(0, 255, (h // 24 + 1, w // 24 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(base).resize((w, h), Image.BICUBIC)
        noise = Image.effect_noise((w, h), 12).convert("RGB")
        im = Image.blend(im, noise, 0.15)
        if fmt == "JPEG":
            im.save(path, "JPEG", quality=90, progressive=progressive)
        else:
            im.save(path, "PNG")
    return path


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MB


def _store_class(impl: str, before: str):
    """UploadStore of this tree, or of git revision `before` (its module source, run under another name)."""
    if impl != "before":
        from cir.serving.uploads import UploadLimits, UploadStore
        return lambda folder, enc, guard: UploadStore(
            folder, enc, UploadLimits(**({"max_pixels": IMPLS[impl]} if IMPLS[impl] else {})), 16, guard)
    src = subprocess.run(["git", "-C", str(REPO_DIR), "show", f"{before}:service/uploads.py"],
                         check=True, capture_output=True, text=True).stdout
    mod = types.ModuleType("uploads_before")
    sys.modules[mod.__name__] = mod  # dataclasses look their module up
    exec(compile(src, f"{before}:service/uploads.py", "exec"), mod.__dict__)  # noqa: S102 (our own history)
    return lambda folder, enc, guard: mod.UploadStore(folder, enc, 10 * MB, 40_000_000, 16, guard)


def worker(image: Path, concurrent: int, impl: str, before: str) -> dict:
    """One measurement, in this (fresh) process."""
    enc = encoders.load("lite", "cpu")
    lock = threading.Lock()
    with tempfile.TemporaryDirectory() as tmp:
        store = _store_class(impl, before)(Path(tmp), enc, lambda: lock)
        small = io.BytesIO()
        __import__("PIL.Image").Image.new("RGB", (300, 200), "red").save(small, "JPEG")
        store.add(small.getvalue())  # warm-up: the encoder's lazy allocations are not the upload's
        data = image.read_bytes()
        base, peak, done = _rss_mb(), [0.0], threading.Event()
        max_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.001)
        statuses: list[str] = []

        def add():
            try:
                store.add(data)
                statuses.append("201")
            except Exception as e:  # noqa: BLE001 -- an ApiError's status, or the crash, is the result
                statuses.append(str(getattr(e, "status", type(e).__name__)))
        sampler = threading.Thread(target=sample)
        sampler.start()
        tracemalloc.start()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=add) for _ in range(concurrent)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        _, py_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        done.set()
        sampler.join()
        max_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if max_after > max_before:  # the kernel's exact high-water mark, when the uploads set it
            peak[0] = max(peak[0], max_after)
    return {"rss_peak_mb": round(peak[0] - base, 1), "python_peak_mb": round(py_peak / MB, 1),
            "seconds": round(seconds, 2), "statuses": sorted(statuses)}


def run_case(image: Path, concurrent: int, impl: str, before: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", str(image), "--concurrent", str(concurrent), "--impl", impl,
           "--before", before]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"rc {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _cell(r: dict) -> str:
    if "error" in r:
        return f"crash ({r['error'][:40]})"
    codes = ",".join(f"{n}x{c}" if n > 1 else c for c, n in _counts(r["statuses"]))
    return f"{r['rss_peak_mb']:.0f} MB ({codes})"


def _counts(xs: list[str]) -> list[tuple[str, int]]:
    return [(x, xs.count(x)) for x in sorted(set(xs))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default="f085ebd", help="git revision whose UploadStore is 'before' (default f085ebd)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated images (default all: {', '.join(CASES)})")
    p.add_argument("--concurrent", default="1,4", help="comma-separated numbers of simultaneous uploads")
    p.add_argument("--impls", default="before,after,after-40mp",
                   help=f"which stores to measure, comma-separated: {', '.join(IMPLS)} (default the first three)")
    p.add_argument("--images", default=None, help="folder for the generated images (default: a temporary one)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--impl", default="after", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # one measurement in a fresh process; its JSON is the last line
        logging.disable(logging.WARNING)
        print(json.dumps(worker(Path(args.worker), int(args.concurrent), args.impl, args.before)))
        return 0
    setup_logging(False)
    concurrency = [int(n) for n in args.concurrent.split(",")]
    impls = args.impls.split(",")
    results: dict = {}
    with contextlib.ExitStack() as stack:
        folder = Path(args.images) if args.images else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        folder.mkdir(parents=True, exist_ok=True)
        for name in args.cases.split(","):
            image = make_image(name, folder)
            results[name] = {"file_kb": round(image.stat().st_size / 1024)}
            for impl in impls:
                for n in concurrency:
                    results[name][f"{impl}@{n}"] = r = run_case(image, n, impl, args.before)
                    log.info("%s %s x%d: %s", name, impl, n, r)
    head = "| image | file | " + " | ".join(f"{i} x{n}" for i in impls for n in concurrency) + " |"
    print(head)
    print("|---|---:|" + "---:|" * (len(impls) * len(concurrency)))
    for name, r in results.items():
        w, h = CASES[name][1:3]
        cells = [_cell(r[f"{i}@{n}"]) for i in impls for n in concurrency]
        print(f"| {name} ({w}x{h}) | {r['file_kb']:,} KB | " + " | ".join(cells) + " |")
    print("\npeak RSS above the idle server while the uploads run (HTTP status of each upload)")
    print("command: python3 benchmarks/bench_uploads.py " + " ".join(sys.argv[1:]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What verifying a feature folder's checksums costs at load: catalogue size and a ~1 GB folder.

    python3 benchmarks/bench_verify.py                                  # 9,583 x 512 and 1,000,000 x 512 fp16
    python3 benchmarks/bench_verify.py --rows 9583 --dim 512 --repeats 9

For each size, a synthetic feature folder (unit rows, float16, with norms, as extract_features.py writes it)
is streamed to --dir (default: the system temporary folder; ~1 GB for a million rows of 512), its
checksums recorded as the extractor records them (utils.sha256_file), and load_index timed `--repeats`
times with the checksums and without them (the same folder, the manifest rewritten), files in the page cache
(after one untimed load), as a server restart sees them. Also: sha256 alone, and the first load right after
writing. The folder is deleted afterwards unless --keep. Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import platform  # noqa: E402

import numpy as np  # noqa: E402

from cir.index import load_index  # noqa: E402
from cir.utils import setup_logging, sha256_file, write_json  # noqa: E402

log = logging.getLogger("bench.verify")


def write_folder(folder: Path, rows: int, dim: int, seed: int = 0, chunk: int = 65536) -> None:
    """A feature folder streamed to disk chunk by chunk (no 1 GB array in memory): safetensors header,
    unit float16 rows, float32 norms, names.json, manifest.json with checksums."""
    folder.mkdir(parents=True)
    feat_bytes, norm_bytes = rows * dim * 2, rows * 4
    header = {"features": {"dtype": "F16", "shape": [rows, dim], "data_offsets": [0, feat_bytes]},
              "norms": {"dtype": "F32", "shape": [rows], "data_offsets": [feat_bytes, feat_bytes + norm_bytes]},
              "__metadata__": {"format": "pt"}}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)   # safetensors aligns the data section to 8 bytes
    rng = np.random.default_rng(seed)
    with open(folder / "features.safetensors", "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for lo in range(0, rows, chunk):
            x = rng.standard_normal((min(chunk, rows - lo), dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            f.write(x.astype("<f2").tobytes())
        f.write(np.full(rows, 7.5, "<f4").tobytes())
    write_json(folder / "names.json", [f"img{i:08d}.jpg" for i in range(rows)])
    write_json(folder / "manifest.json", {"encoder": "synthetic", "dim": dim, "count": rows, "dtype": "float16",
                                          "normalized": True, "norms": True, "format_version": 2})


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def measure(root: Path, rows: int, dim: int, repeats: int, keep: bool) -> dict:
    folder = root / f"bench-verify-{rows}x{dim}"
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    write_folder(folder, rows, dim)
    write_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        sums = {n: sha256_file(folder / n) for n in ("features.safetensors", "names.json")}
        checksum_s = time.perf_counter() - t0     # what the extractor adds once per extraction
        manifest = json.loads((folder / "manifest.json").read_text())
        write_json(folder / "manifest.json", {**manifest, "checksums": sums})
        first = timed(lambda: load_index(folder), 1)[0]
        assert load_index(folder).verified
        verified = timed(lambda: load_index(folder), repeats)
        sha = timed(lambda: sha256_file(folder / "features.safetensors"), repeats)
        write_json(folder / "manifest.json", manifest)
        logging.getLogger("index").setLevel(logging.ERROR)   # the one "unverified" warning is expected here
        load_index(folder)
        plain = timed(lambda: load_index(folder), repeats)
        logging.getLogger("index").setLevel(logging.NOTSET)
        size = sum(f.stat().st_size for f in folder.iterdir())
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows, "dim": dim, "bytes": size, "write_s": round(write_s, 2), "checksum_s": round(checksum_s, 3),
            "first_load_ms": first, "load_verified_ms": statistics.median(verified),
            "load_unverified_ms": statistics.median(plain), "sha256_features_ms": statistics.median(sha),
            "sha256_gb_per_s": size / statistics.median(sha) / 1e6, "repeats": repeats}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", default="9583,1000000", help="comma-separated folder sizes in rows")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (ViT-B/32 CLIP: 512)")
    p.add_argument("--repeats", type=int, default=5, help="timed loads per variant (median reported)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the synthetic folders are written")
    p.add_argument("--keep", action="store_true", help="keep the synthetic folders instead of deleting them")
    p.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args()
    setup_logging(args.verbose)
    load_before = os.getloadavg()
    results = [measure(Path(args.dir), int(r), args.dim, args.repeats, args.keep) for r in args.rows.split(",")]
    print("| rows x dim | folder MB | load, verified ms | load, no checksums ms | verification ms | "
          "first load after writing ms | sha256 at extraction s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['rows']:,} x {r['dim']} | {r['bytes'] / 2**20:.0f} | {r['load_verified_ms']:.1f} | "
              f"{r['load_unverified_ms']:.1f} | {r['load_verified_ms'] - r['load_unverified_ms']:.1f} | "
              f"{r['first_load_ms']:.1f} | {r['checksum_s']:.2f} |")
    info = {"command": "python3 benchmarks/bench_verify.py " + " ".join(sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    print(f"\nCommand: `{info['command']}`; {info['machine']}; load average before "
          f"{', '.join(f'{x:.2f}' for x in load_before)}, after {', '.join(f'{x:.2f}' for x in info['loadavg_after'])}")
    print(json.dumps({**info, "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

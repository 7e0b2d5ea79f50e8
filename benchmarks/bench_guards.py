"""What the JSON depth check costs on bodies built against it (issue 20), before and after the linear scan.

    python3 benchmarks/bench_guards.py                 # the scan, 20 repeats; the old regex, once
    python3 benchmarks/bench_guards.py --no-old        # the scan only

Bodies (each under the 64 KB cap): the issue's attack (21 brackets, then an unterminated string of 32,000
escaped quotes: 64,022 bytes), the same quotes between 15 and 10 brackets (under the depth limit, so the whole
body is scanned), 32,000 empty arrays (the most tokens a body can hold: one loop step each) and an ordinary
search body. For each: cir.web.guards.parse_json_object (what a request
runs: the depth check, then json.loads when it passes) timed with the scan of this version, and with the
regex scan it replaced (`"(?:[^"\\\\]|\\\\.)*"` substituted before counting brackets), which backtracks on an
unterminated string of escapes. Prints a markdown table, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cir.serving.errors import BadInput  # noqa: E402
from cir.web import guards  # noqa: E402

BODIES = {
    "issue 20 attack": "[" * 21 + '"' + '\\"' * 32000,
    "escaped quotes, full scan": "[" * 15 + '"' + '\\"' * 32000 + "[" * 10,
    "64,000 shallow brackets": "[]" * 32000,
    "a search body": json.dumps({"dataset": "catalog-all", "mode": "composed", "reference": "15970",
                                 "caption": "is blue with longer sleeves", "k": 24, "tags": {"gender": "Men"}}),
}
_OLD_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)


def old_too_deep(text: str, limit: int) -> bool:
    """The check this version replaced (cir/web/guards.py before issue 20)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for ch in re.findall(r"[\[\]{}]", _OLD_STRINGS.sub('""', text)):
        depth += 1 if ch in "[{" else -1
        if depth > limit:
            return True
    return False


def time_parse(body: str, repeats: int) -> list[float]:
    """Seconds per parse_json_object call on `body` (a BadInput answer counts: it is the 400's cost)."""
    data, out = body.encode(), []
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            guards.parse_json_object(data)
        except BadInput:
            pass
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=20, help="timed calls per body with the linear scan")
    p.add_argument("--no-old", action="store_true", help="skip the old regex (about 10 s or more per attack body)")
    args = p.parse_args()
    rows, results = [], {}
    for name, body in BODIES.items():
        new = time_parse(body, args.repeats)
        old = None
        if not args.no_old:
            current = guards.too_deep
            guards.too_deep = old_too_deep   # parse_json_object calls it by its module name
            try:
                old = time_parse(body, 1)[0]
            finally:
                guards.too_deep = current
        results[name] = {"bytes": len(body), "ms_p50": round(statistics.median(new) * 1000, 3),
                         "ms_max": round(max(new) * 1000, 3), "old_ms": None if old is None else round(old * 1000, 1)}
        r = results[name]
        rows.append(f"| {name} | {r['bytes']:,} | {r['ms_p50']} | {r['ms_max']} | "
                    f"{'-' if old is None else r['old_ms']} |")
    print(f"python {platform.python_version()}, {platform.machine()}, {args.repeats} repeats\n")
    print("| body | bytes | scan p50 ms | scan max ms | old regex ms |\n|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

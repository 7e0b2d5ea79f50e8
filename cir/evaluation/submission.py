"""The CIRR evaluation server's submission files (evaluate.py --submission): the two JSON payloads of a
ranking run and their names, as CLIP4Cir's submission script writes them, and `check_submission`, which reads
them back as the server would."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Collection, Sequence

from cir.data import Triplet
from cir.utils import atomic_write

log = logging.getLogger("evaluate")
TOP = 50                      # ranking length saved and scored (R@50), as the papers
CIRR_SUBSET_TOP = 3           # the evaluation server reads the first 3 subset results
MAX_BYTES = 5_000_000         # the evaluation server's upload limit per file


def cirr_submission(pair_ids: Sequence[int], rankings: Sequence[Sequence[str]],
                    subset_rankings: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """The CIRR evaluation server's two payloads: (recall: top 50 per pair id, recall_subset: top 3)."""
    if len(set(pair_ids)) != len(pair_ids):
        raise ValueError("duplicate CIRR pair ids: the submission needs one entry per pair id")
    if not len(pair_ids) == len(rankings) == len(subset_rankings):
        raise ValueError(f"{len(pair_ids)} pair ids but {len(rankings)} rankings and "
                         f"{len(subset_rankings)} subset rankings")
    recall = {"version": "rc2", "metric": "recall"}
    subset = {"version": "rc2", "metric": "recall_subset"}
    for pid, full, sub in zip(pair_ids, rankings, subset_rankings):
        recall[str(int(pid))] = list(full[:TOP])
        subset[str(int(pid))] = list(sub[:CIRR_SUBSET_TOP])
    return recall, subset


def submission_paths(path: str | Path) -> tuple[Path, Path]:
    """out/sub.json -> (out/recall_submission_sub.json, out/recall_subset_submission_sub.json), the
    names CLIP4Cir's submission script writes."""
    path = Path(path)
    return (path.with_name(f"recall_submission_{path.stem}.json"),
            path.with_name(f"recall_subset_submission_{path.stem}.json"))


def write_submission(path: str | Path, recall: dict, subset: dict) -> tuple[Path, Path]:
    """Write the two payloads of `cirr_submission` beside `path` (see submission_paths), atomically, as
    compact JSON (indented, the test1 recall file, 4,148 pairs x 50 names, would exceed 5 MB)."""
    paths = submission_paths(path)
    for out, payload in zip(paths, (recall, subset)):
        with atomic_write(out, "w") as f:
            json.dump(payload, f, separators=(",", ":"))
        log.info("wrote %s (%d pair ids)", out, len(payload) - 2)
    return paths


def check_submission(path: str | Path, triplets: Sequence[Triplet], names: Collection[str] | None = None
                     ) -> tuple[dict, dict]:
    """Read the two files `write_submission(path, ...)` wrote and check them against the split's annotations
    `triplets` (and its image `names`, when given): version rc2 and metric names, one entry per pair id, each
    under MAX_BYTES; recall lists of distinct names without the reference, 50 of them (fewer only when the
    split has fewer other images); recall_subset lists of the first 3 (or all) other members of the pair's
    img_set. ValueError naming the first problem; the two payloads when they pass."""
    payloads = []
    for file, metric in zip(submission_paths(path), ("recall", "recall_subset")):
        if not file.is_file():
            raise ValueError(f"submission file {file} is missing")
        if file.stat().st_size > MAX_BYTES:
            raise ValueError(f"{file} has {file.stat().st_size} bytes, over the server's {MAX_BYTES}")
        payload = json.loads(file.read_text())
        if (payload.get("version"), payload.get("metric")) != ("rc2", metric):
            raise ValueError(f"{file}: expected version rc2 and metric {metric}, got "
                             f"{payload.get('version')!r} and {payload.get('metric')!r}")
        ids = [k for k in payload if k not in ("version", "metric")]
        wanted = [str(t.pair_id) for t in triplets]
        if sorted(ids) != sorted(wanted):
            missing, extra = set(wanted) - set(ids), set(ids) - set(wanted)
            raise ValueError(f"{file}: pair ids differ from the annotations' ({len(missing)} missing, "
                             f"{len(extra)} unknown)")
        payloads.append(payload)
    recall, subset = payloads
    for t in triplets:
        _check_lists(t, recall[str(t.pair_id)], subset[str(t.pair_id)], names)
    return recall, subset


def _check_lists(t: Triplet, full: list, sub: list, names: Collection[str] | None) -> None:
    """One pair's two lists, as check_submission describes them."""
    where = f"pair id {t.pair_id}"
    for ranked in (full, sub):
        if not all(isinstance(n, str) for n in ranked) or len(set(ranked)) != len(ranked):
            raise ValueError(f"{where}: a list of distinct image names expected, got {ranked[:5]}...")
        if t.reference in ranked:
            raise ValueError(f"{where}: the reference {t.reference} is ranked")
    if names is not None:
        unknown = [n for n in full if n not in names]
        if unknown:
            raise ValueError(f"{where}: {unknown[0]} is not an image of the split")
        others = len(set(names) - {t.reference})
        if len(full) != min(TOP, others):
            raise ValueError(f"{where}: {len(full)} names in recall, expected {min(TOP, others)}")
    elif not 0 < len(full) <= TOP:
        raise ValueError(f"{where}: {len(full)} names in recall, expected 1 to {TOP}")
    members = [m for m in dict.fromkeys(t.group) if m != t.reference and (names is None or m in names)]
    if not set(sub) <= set(members) or len(sub) != min(CIRR_SUBSET_TOP, len(members)):
        raise ValueError(f"{where}: recall_subset {sub} is not the first {CIRR_SUBSET_TOP} other members of its "
                         "img_set")

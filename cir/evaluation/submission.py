"""The CIRR evaluation server's submission files (evaluate.py --submission): the two JSON payloads of a
ranking run and their names, as CLIP4Cir's submission script writes them."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from cir.utils import atomic_write

log = logging.getLogger("evaluate")
TOP = 50                      # ranking length saved and scored (R@50), as the papers
CIRR_SUBSET_TOP = 3           # the evaluation server reads the first 3 subset results


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

"""One-shot feature extraction into verified feature folders.

    job         the job both engines share: image files, batches, resumable shards, the final files + checksums,
                the output folder's lock
    local       the local engine (DataLoader workers + one encoder) and the API: extract_index, ensure_index,
                index_name, plan_indexes, IndexStore / open_dataset_index (how everything opens an index) and
                reextract_reason (why a finished folder should be extracted again)
    ray_engine  the Ray Data engine (`extract_features.py --engine ray`; Ray imported only when used)
"""
from cir.extraction.job import ExtractResult
from cir.extraction.local import (
    DatasetIndex,
    IndexStore,
    ensure_index,
    extract_index,
    index_name,
    open_dataset_index,
    plan_indexes,
    reextract_reason,
)

__all__ = ["DatasetIndex", "ExtractResult", "IndexStore", "ensure_index", "extract_index", "index_name",
           "open_dataset_index", "plan_indexes", "reextract_reason"]

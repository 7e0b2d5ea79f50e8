"""Feature indexes, the one search function, and its interchangeable backends.

`search(queries, index, k, exclude, subset)` is the only ranking code in the project: evaluation, the server
and the API all call it. An index is a folder written by extract_features.py (cir.extraction) (features.safetensors with
L2-normalised float16 rows and, since format 2, each row's float32 norm, so that `FeatureIndex.raw` gives
back the encoder's raw features for composition; names.json; manifest.json with the files' checksums).
`load_index(path, backend)` checks it is complete, consistent and unaltered and memory-maps the features;
the backend, chosen by a URI-like spec, does the ranking:

    exact                                  fp16 scan of the memory-mapped matrix, in cache-sized blocks (default)
    exact?block=4096&block16=32768         rows per block of the float32 (batches) and fp16 (1-4 queries) scans
    faiss                                  faiss: HNSW up to 2M rows, IVF-PQ above (see FaissBackend)
    faiss:hnsw?M=32&efSearch=128           ... with chosen parameters (efSearch/nprobe are tuned when not given)
    faiss:ivfpq?nlist=4096&m=32&nprobe=32&rerank=10
    milvus                                 milvus-lite, embedded, in <index dir>/milvus.db
    milvus:./path/to/file.db               milvus-lite in another file
    milvus:http://host:19530?token=T&db=D  a Milvus server or cluster (token also from $MILVUS_TOKEN)

Every backend keeps the same contract: scores and row ids [B, k'], best first; `exclude` rows are never
returned (k' = k capped so that they cannot be); `subset` restricts a query to some rows (a CIRR img_set);
`boost` (metadata.Terms: the caption's words found in the dataset's own metadata) reranks the top candidates;
`filters` (facets.RowFilter: {"gender": ["Women"]} as a row mask) restricts every backend to the rows kept.

The package: errors (the error hierarchy), files (the files of a folder: header, mapping, norms, sampled
check, fingerprint, checksums), feature_index (FeatureIndex, load_index, with_backend), search (Plan,
make_plan, search, the exact scan), metadata (Metadata, Terms: the metadata path of composed search), facets
(Facets, RowFilter: facet filters), session (session-aware ranking of a shopper's turns), specs +
registry (backend specs, kind -> backend class) and backends/ (base, exact, faiss, milvus). The command line
is `python3 -m cir.index check|build|load` (cir/cli/index.py).
"""
from __future__ import annotations

from .backends.base import Backend, UnavailableBackend, ann_recall
from .backends.exact import ExactBackend
from .backends.faiss import FaissBackend
from .backends.milvus import MilvusBackend, collection_name, load_into_milvus, milvus_client
from .errors import BackendUnavailable, IndexLoadError, StaleIndexError
from .facets import Facets, FilterError, RowFilter
from .feature_index import FeatureIndex, load_index, open_backend_or_placeholder, rank_subset, with_backend
from .files import FEATURES_FILE, features_fingerprint, map_features, read_norms, verify_checksums
from .metadata import Metadata, Terms
from .registry import BACKENDS, open_backend, parse_backend
from .search import Boost, Plan, exact_search, make_plan, search
from .specs import BackendSpec, mask_credentials

__all__ = [
    "BACKENDS", "Backend", "BackendSpec", "BackendUnavailable", "Boost", "ExactBackend", "FEATURES_FILE",
    "Facets", "FaissBackend", "FeatureIndex", "FilterError", "IndexLoadError", "Metadata", "MilvusBackend", "Plan",
    "RowFilter", "StaleIndexError", "Terms", "UnavailableBackend",
    "ann_recall", "collection_name", "exact_search", "features_fingerprint", "load_index", "load_into_milvus",
    "make_plan", "map_features", "mask_credentials", "milvus_client", "open_backend",
    "open_backend_or_placeholder", "parse_backend", "rank_subset", "read_norms", "search", "verify_checksums",
    "with_backend",
]

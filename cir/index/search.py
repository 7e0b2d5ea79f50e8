"""The search contract and the exact scan: `search(queries, index, k, exclude, subset)` is the only ranking
code in the project; evaluation, the server and the API all call it.

make_plan validates a query batch once (row ids in range, one exclude entry per query, k capped so that no
excluded row can ever be returned) into a Plan; every backend ranks a Plan, and falls back on
`exact_search`, the blocked scan of the (memory-mapped) float16 matrix, where it cannot.

An optional `filters` (a boolean row mask, or one per query: cir.index.facets.Facets.select turns
{"gender": ["Women"], ...} into one) restricts every backend to the rows it keeps; a selective one (at most
SUBSET_SHARE of the rows) is ranked by the exact scan as a subset (the kept rows gathered), a wider one as a
mask (-inf in each block); faiss applies it as an id selector, Milvus as an id expression.

An optional `boost` (a Boost per query, e.g. cir.index.metadata.Terms: the metadata path) changes the scores
of the top candidates of that ranking and ranks them again; without one search() is the ranking alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Protocol, Sequence

import numpy as np
import torch


class Searchable(Protocol):
    """What search() ranks besides a plain tensor: a FeatureIndex (rows, dim and the backend ranking them)."""

    backend: Any

    def __len__(self) -> int: ...

    @property
    def dim(self) -> int: ...


class Boost(Protocol):
    """A per-row change of a query's scores (cir.index.metadata.Terms); falsy when it changes nothing."""

    def adjust(self, rows: np.ndarray) -> np.ndarray: ...

    def __bool__(self) -> bool: ...


# A boost reranks the top RERANK_CANDIDATES rows of the ordinary ranking (at least k), or every row of an
# index this small: a boosted item found lower down in a big index is missed, the price of working with
# every backend unchanged.
RERANK_CANDIDATES = 500
RERANK_ALL_UP_TO = 10_000
# The exact scan ranks a filter keeping at most this share of the rows as a subset (the kept rows gathered
# and scored exactly: cheaper than scanning every row; measured at 1M: 2% kept, 14 ms against a 50 ms scan).
SUBSET_SHARE = 1 / 16


@dataclass
class Plan:
    """A validated query batch: effective k, per-query excluded rows, and the allowed rows (None: all)."""

    k: int
    n: int
    exclude: list[np.ndarray | None]            # sorted unique row ids per query
    subset: list[np.ndarray] | None = None      # sorted unique allowed rows per query (None: every row)
    shared_subset: bool = False                 # one subset for all queries (subset[i] is the same array)
    mask: list[np.ndarray | None] | None = None  # per query, a boolean mask of the allowed rows (None: all)

    @property
    def most_excluded(self) -> int:
        return max((len(e) for e in self.exclude if e is not None), default=0)

    def allowed(self, i: int) -> np.ndarray | None:
        return None if self.subset is None else self.subset[i]

    def allowed_rows(self, i: int) -> np.ndarray | None:
        """The rows query i may get, from its subset or its filter mask (None: every row)."""
        if self.subset is not None:
            return self.subset[i]
        m = None if self.mask is None else self.mask[i]
        return None if m is None else np.flatnonzero(m)

    def take(self, rows: Sequence[int]) -> "Plan":
        """The plan of some of the queries (their exclude, subset and mask entries), same k: for a part of a
        batch that is ranked apart (a chunk of queries, the ones an ANN index could not fill)."""
        rows = list(rows)
        subset = None if self.subset is None else [self.subset[i] for i in rows]
        mask = None if self.mask is None else [self.mask[i] for i in rows]
        return Plan(self.k, self.n, [self.exclude[i] for i in rows], subset, self.shared_subset, mask)


def _ids(values: Any, n: int, what: str) -> np.ndarray:
    arr = np.unique(np.asarray(values.tolist() if isinstance(values, torch.Tensor) else list(values),
                               dtype=np.int64).reshape(-1))
    if len(arr) and (arr[0] < 0 or arr[-1] >= n):
        raise ValueError(f"{what} row id {arr[0] if arr[0] < 0 else arr[-1]} is out of range for an index of "
                         f"{n} rows")
    return arr


def _filter_masks(filters: Any, b: int, n: int) -> list[np.ndarray | None] | None:
    """filters -> one boolean mask [n] (or None) per query: one mask (an array, or an object with `.mask`,
    e.g. a facets.RowFilter) for every query, or a list of them, one per query."""
    if filters is None:
        return None
    one = getattr(filters, "mask", filters)
    if isinstance(one, (np.ndarray, torch.Tensor)):
        masks: list = [one] * b
    else:
        masks = [None if f is None else getattr(f, "mask", f) for f in filters]
        if len(masks) != b:
            raise ValueError(f"filters has {len(masks)} entries for {b} queries")
    out: list[np.ndarray | None] = []
    for m in masks:
        if m is not None:
            m = np.asarray(m.numpy() if isinstance(m, torch.Tensor) else m, dtype=bool).reshape(-1)
            if len(m) != n:
                raise ValueError(f"a filter mask has {len(m)} entries for an index of {n} rows")
        out.append(m)
    # masks that were one object stay one object (shared: the scan masks a block once for all queries)
    return [out[0]] * b if b and all(x is one for x in masks) else out


def make_plan(b: int, n: int, k: int, exclude: Any = None, subset: Any = None, filters: Any = None) -> Plan:
    """Check exclude / subset / filters against the batch and the index, and cap k so no excluded or
    filtered-out row can be returned. A filter within a subset narrows it; else it stays a mask."""
    if exclude is not None and len(exclude) != b:
        raise ValueError(f"exclude has {len(exclude)} entries for {b} queries")
    excl: list[np.ndarray | None] = [None] * b
    for i, ex in enumerate(exclude if exclude is not None else []):
        if ex is not None:
            excl[i] = _ids([ex] if isinstance(ex, (int, np.integer)) else ex, n, "excluded")
    subsets, shared = None, False
    if subset is not None:
        items = subset.tolist() if isinstance(subset, (torch.Tensor, np.ndarray)) else list(subset)
        if all(isinstance(x, (int, np.integer)) for x in items):   # one list of rows for every query
            one = _ids(items, n, "subset")
            subsets, shared = [one] * b, True
        else:
            if len(items) != b:
                raise ValueError(f"subset has {len(items)} entries for {b} queries (give one list of row ids "
                                 "for all queries, or one list per query)")
            subsets = [_ids(s, n, "subset") for s in items]
    masks = _filter_masks(filters, b, n)
    subsets, shared, masks = _narrow(subsets, shared, masks, n)
    allowed = [len(subsets[i]) if subsets else n if masks is None or masks[i] is None else int(masks[i].sum())
               for i in range(b)]
    for i, e in enumerate(excl):
        if e is not None:
            inside = e if subsets is None else e[np.isin(e, subsets[i])]
            if masks is not None and masks[i] is not None:
                inside = inside[masks[i][inside]]
            allowed[i] -= len(inside)
    if k < 0:
        raise ValueError(f"k must be at least 0, not {k}")
    # Never return an excluded row, even when k reaches into them (small indexes, small subsets).
    return Plan(max(0, min([k, n, *allowed])), n, excl, subsets, shared, masks)


def _narrow(subsets: list[np.ndarray] | None, shared: bool, masks: list[np.ndarray | None] | None,
            n: int) -> tuple[list[np.ndarray] | None, bool, list[np.ndarray | None] | None]:
    """Filters within subsets narrow them; without subsets they stay masks."""
    if masks is None or all(m is None for m in masks):
        return subsets, shared, None
    one_mask = all(m is masks[0] for m in masks)
    if subsets is None:     # each backend decides how to apply a mask (see selective_subset)
        return None, False, masks
    if shared and one_mask:
        s = subsets[0][masks[0][subsets[0]]]
        return [s] * len(masks), True, None
    return [s if m is None else s[m[s]] for s, m in zip(subsets, masks)], False, None


def search(queries: torch.Tensor, index: Searchable | torch.Tensor, k: int,
           exclude: Sequence[Iterable[int] | int | None] | None = None,
           subset: Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | None = None,
           boost: Boost | Sequence[Boost | None] | None = None, candidates: int | None = None,
           filters: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k cosine similarity of normalised queries [B,d] against the index rows.

    exclude: one entry per query, a row id or ids that must not be returned for that query (e.g. the
    reference image itself). subset: the only rows that may be returned, one list of row ids for every query
    or one list per query (e.g. a CIRR img_set). Returns (scores [B,k'], ids [B,k']) with k' = min(k, the
    fewest rows any query may get), best first. A FeatureIndex is ranked by its backend (exact unless chosen
    otherwise); a plain tensor [N,d] by the exact scan.

    boost: one Boost for every query or one per query (None: none for that query). A query's top
    max(k, candidates) rows (default RERANK_CANDIDATES; every row of an index of up to RERANK_ALL_UP_TO) get
    score + boost.adjust(rows) and are ranked again; the scores returned are those. Without a boost, or with
    only empty ones, the ranking is exactly the one without the argument.

    filters: the rows that may be returned as a boolean mask [N] (or an object with `.mask`, e.g.
    facets.RowFilter), one for every query or a list, one per query (None: no filter for that query).
    """
    if boost is not None:
        boosts = _per_query(boost, 1 if queries.ndim == 1 else queries.shape[0])
        if any(boosts):
            return _boosted(queries, index, k, exclude, subset, boosts, candidates, filters)
    q = queries.detach().float()
    if q.ndim == 1:
        q = q[None]
    q = q.contiguous()
    if isinstance(index, torch.Tensor):
        n, dim, backend = index.shape[0], index.shape[1], None
    else:
        n, dim, backend = len(index), index.dim, index.backend
    if q.shape[1] != dim:
        raise ValueError(f"query dim {q.shape[1]} does not match index dim {dim}")
    plan = make_plan(q.shape[0], n, k, exclude, subset, filters)
    if backend is None:
        return exact_search(index, q, plan)
    return backend.search(q, plan)


def selective_subset(plan: Plan, share: float = SUBSET_SHARE) -> Plan:
    """The plan with its filter masks as subsets when every query's keeps at most `share` of the rows (the
    kept rows are then gathered and scored exactly: cheaper than a scan, exact where an ANN walk would
    starve of allowed rows); else the plan as it is."""
    masks = plan.mask
    if masks is None or plan.subset is not None or any(m is None or m.sum() > share * plan.n for m in masks):
        return plan
    if all(m is masks[0] for m in masks):
        return Plan(plan.k, plan.n, plan.exclude, [np.flatnonzero(masks[0])] * len(masks), True)
    return Plan(plan.k, plan.n, plan.exclude, [np.flatnonzero(m) for m in masks], False)


def _per_query(boost: Boost | Sequence[Boost | None], b: int) -> list[Boost | None]:
    if not isinstance(boost, (list, tuple)):
        return [boost] * b
    if len(boost) != b:
        raise ValueError(f"boost has {len(boost)} entries for {b} queries")
    return list(boost)


def _boosted(queries: torch.Tensor, index: Searchable | torch.Tensor, k: int, exclude: Any, subset: Any,
             boosts: list[Boost | None], candidates: int | None,
             filters: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordinary ranking's top candidates (same exclude, subset and filters), each boosted query's ranked
    again."""
    if k < 0:
        raise ValueError(f"k must be at least 0, not {k}")
    n = index.shape[0] if isinstance(index, torch.Tensor) else len(index)
    pool = candidates if candidates is not None else n if n <= RERANK_ALL_UP_TO else RERANK_CANDIDATES
    scores, ids = search(queries, index, max(k, pool), exclude, subset, filters=filters)
    for i, b in enumerate(boosts):
        if b:
            row = ids[i]
            boosted = scores[i] + torch.from_numpy(b.adjust(row.numpy())).to(scores.dtype)
            boosted, order = torch.sort(boosted, descending=True, stable=True)
            scores[i], ids[i] = boosted, row[order]
    kk = min(k, ids.shape[1])
    return scores[:, :kk].contiguous(), ids[:, :kk].contiguous()


# ----------------------------------------------------------------------------------------------- exact scan

def _empty(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(b, 0), torch.zeros(b, 0, dtype=torch.long)


def _merge(best: tuple[torch.Tensor, torch.Tensor] | None, vals: torch.Tensor, ids: torch.Tensor, k: int):
    """Running top-k: the best k of the kept candidates and a block's."""
    if best is not None:
        vals, ids = torch.cat([best[0], vals], 1), torch.cat([best[1], ids], 1)
    if vals.shape[1] > k:
        top = torch.topk(vals, k, dim=1)
        return top.values, torch.gather(ids, 1, top.indices)
    if best is not None:   # k reaches past the rows seen so far: keep them all, best first
        vals, order = torch.sort(vals, dim=1, descending=True)
        ids = torch.gather(ids, 1, order)
    return vals, ids


def _excluded_pairs(plan: Plan, rows: range) -> tuple[np.ndarray, np.ndarray]:
    """(query, row) pairs to mask for the queries in `rows`, sorted by row (masked block by block)."""
    qi = [np.full(len(e), i - rows.start) for i in rows if (e := plan.exclude[i]) is not None]
    ri = [plan.exclude[i] for i in rows if plan.exclude[i] is not None]
    if not ri:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    qi, ri = np.concatenate(qi), np.concatenate(ri)
    order = np.argsort(ri, kind="stable")
    return qi[order], ri[order]


def _scan(features: torch.Tensor, q: torch.Tensor, plan: Plan, block: int, k: int | None = None,
          half: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked scan with a running top-k. half: fp16 products straight from the fp16 rows (one memory pass,
    no conversion: fastest for a few queries); else each block is converted to float32 once into a
    cache-sized buffer and multiplied by all queries (fastest for batches, exact float32 scores)."""
    k = plan.k if k is None else k
    n, b = features.shape[0], q.shape[0]
    qi, ri = _excluded_pairs(plan, range(b))
    qq = q.half() if half else q
    buf = None if half or features.dtype == torch.float32 else torch.empty(min(block, n), features.shape[1])
    best = None
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        rows = features[lo:hi]
        if not half and buf is not None:
            rows = buf[:hi - lo].copy_(rows)
        s = (qq @ rows.T).float() if half else qq @ rows.T
        a, z = np.searchsorted(ri, [lo, hi])
        if z > a:
            s[torch.from_numpy(qi[a:z]), torch.from_numpy(ri[a:z] - lo)] = float("-inf")
        if plan.mask is not None:
            s.masked_fill_(_denied(plan.mask, lo, hi), float("-inf"))
        top = torch.topk(s, min(k, hi - lo), dim=1)
        best = _merge(best, top.values, top.indices + lo, k)
    return best if best is not None else _empty(b)


def _denied(masks: list[np.ndarray | None], lo: int, hi: int) -> torch.Tensor:
    """The rows [lo, hi) each query's filter mask leaves out, [B or 1, hi - lo] (one row when shared)."""
    if all(m is masks[0] for m in masks) and masks[0] is not None:
        return torch.from_numpy(~masks[0][lo:hi])[None]
    return torch.from_numpy(np.stack([np.zeros(hi - lo, bool) if m is None else ~m[lo:hi] for m in masks]))


def rescore(features: torch.Tensor, q: torch.Tensor, cand: torch.Tensor, cand_vals: torch.Tensor,
            k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact float32 scores of candidate rows [B,c] (gathered from the mapped file), best k."""
    b, c = cand.shape
    rows = features[cand.reshape(-1)].float().view(b, c, -1)
    exact = torch.einsum("bd,bcd->bc", q, rows)
    exact[torch.isneginf(cand_vals)] = float("-inf")   # excluded rows stay excluded
    top = torch.topk(exact, k, dim=1)
    return top.values, torch.gather(cand, 1, top.indices)


def _subset_search(features: torch.Tensor, q: torch.Tensor, plan: Plan) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores against each query's allowed rows only (gathered: subsets are small, e.g. an img_set)."""
    b, k = q.shape[0], plan.k
    groups = [list(range(b))] if plan.shared_subset else [[i] for i in range(b)]
    vals, ids = torch.empty(b, k), torch.empty(b, k, dtype=torch.long)
    for members in groups:
        rows = plan.subset[members[0]]
        t_rows = torch.from_numpy(rows)
        s = q[members] @ features[t_rows].float().T
        for j, i in enumerate(members):
            e = plan.exclude[i]
            if e is not None:
                s[j, torch.from_numpy(np.flatnonzero(np.isin(rows, e)))] = float("-inf")
        top = torch.topk(s, k, dim=1)
        vals[members], ids[members] = top.values, t_rows[top.indices]
    return vals, ids


# fp16 product error for unit vectors: query rounding (2^-11 relative, Cauchy-Schwarz) plus output rounding
# (half an ulp, 2^-12 below 1), accumulated in float32; doubled for safety. Candidates within twice this of
# the k-th fp16 score are rescored in float32, so the result equals a float32 scan.
FP16_SCORE_ERROR = 2 * (2 ** -11 + 2 ** -12)
FP16_EXTRA_CANDIDATES = 16


def exact_search(features: torch.Tensor, q: torch.Tensor, plan: Plan, block: int = 4096,
                 block16: int = 32768, half_max_batch: int = 4,
                 normalized: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of float32 queries against `features` (fp16 or fp32, mapped or in memory).

    A few queries against normalised fp16 rows: one fp16 pass selects k+16 candidates, which are rescored
    in float32; the error bound above keeps the result identical to a float32 scan. Otherwise: float32
    blocks, queries in chunks of 256. Block sizes measured on 1M x 256, 2 cores (AMD EPYC, 32 MB L3), one
    query: fp16 blocks of 32768 rows (16 MB) 38 ms, 8192 rows 45 ms, float32 conversion of 4096-row
    blocks 52-70 ms, against a 26 ms memory-bandwidth floor; 32 queries: float32 blocks of 4096 rows (4 MB)
    245 ms, 2048 270 ms, 8192 296 ms.
    """
    b = q.shape[0]
    if plan.k == 0 or b == 0:
        return torch.zeros(b, plan.k), torch.zeros(b, plan.k, dtype=torch.long)
    plan = selective_subset(plan)
    if plan.subset is not None:
        return _subset_search(features, q, plan)
    qnorm = float(q.norm(dim=1).max())
    if normalized and features.dtype == torch.float16 and b <= half_max_batch and qnorm < 64:
        kk = min(plan.n, plan.k + FP16_EXTRA_CANDIDATES)
        vals, cand = _scan(features, q, plan, block16, k=kk, half=True)
        # Complete when no row outside the candidates can beat the k-th: its fp16 score is at most the
        # kk-th candidate's, and the true top k all have fp16 scores above (k-th - 2 x error).
        complete = (kk >= plan.n) | (vals[:, -1] < vals[:, plan.k - 1] - FP16_SCORE_ERROR * max(qnorm, 1.0))
        out = rescore(features, q, cand, vals, plan.k)
        if bool(complete.all()):
            return out
        redo = torch.nonzero(~complete).flatten().tolist()   # near-ties in fp16 (duplicates): scan in float32
        out[0][redo], out[1][redo] = _scan(features, q[redo], plan.take(redo), block)
        return out
    parts = []
    for lo in range(0, b, 256):
        rows = range(lo, min(b, lo + 256))
        parts.append(_scan(features, q[lo:rows.stop], plan.take(rows), block))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

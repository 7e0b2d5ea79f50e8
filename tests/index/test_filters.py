"""Facet filters inside the one search function (cir.index.facets, search(..., filters=)): AND across
attributes, OR within one; unknown names raise FilterError naming them; the exact scan (mask and subset
routes), faiss (id selector) and Milvus (id expression) all return only kept rows, matching a dense search
over them."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir.data import ImageRecord
from cir.index import Facets, FilterError, RowFilter, ann_recall, load_index, load_into_milvus, search
from cir.index.search import SUBSET_SHARE, make_plan, selective_subset

N, DIM = 3000, 64
GENDERS, COLOURS = ("Men", "Women", "Boys", "Girls"), ("Red", "Maroon", "Blue", "Black", "White")


def _records(n: int) -> list[ImageRecord]:
    return [ImageRecord(str(i), Path(f"{i}.jpg"), {"gender": GENDERS[i % 4], "baseColour": COLOURS[(i // 4) % 5],
                                                  "articleType": "Tshirts", "usage": "Casual"}) for i in range(n)]


def _queries(x: torch.Tensor, count: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(x), (count,), generator=g)
    return F.normalize(x[rows].float() + 0.5 * F.normalize(torch.randn(count, x.shape[1], generator=g), dim=1), dim=1)


def _dense(q: torch.Tensor, x: torch.Tensor, k: int, mask: np.ndarray, exclude=None):
    s = q.float() @ x.float().T
    s[:, torch.from_numpy(~mask)] = float("-inf")
    for i, e in enumerate(exclude or []):
        s[i, e] = float("-inf")
    top = torch.topk(s, k, dim=1)
    return top.values, top.indices


@pytest.fixture(scope="module")
def folder(tmp_path_factory, write_folder) -> tuple[Path, torch.Tensor]:
    path = tmp_path_factory.mktemp("features") / "catalog-test"
    return path, write_folder(path, n=N, dim=DIM)


def test_select_is_and_across_or_within_and_names_unknowns():
    facets = Facets.from_records(_records(40))
    keep = facets.select({"gender": ["Women"], "baseColour": ["Red", "Maroon"]})
    rows = set(np.flatnonzero(keep.mask).tolist())
    want = {i for i in range(40) if i % 4 == 1 and (i // 4) % 5 in (0, 1)}
    assert rows == want and keep.count == len(want) and keep.filters["baseColour"] == ("Red", "Maroon")
    assert facets.select({}) is None and facets.select(None) is None
    assert facets.select({"gender": "Men"}).count == 10    # one value as a string
    with pytest.raises(FilterError, match=r"attribute 'colour'.*baseColour value 'Pink'"):
        facets.select({"colour": ["Red"], "baseColour": ["Pink"]})
    for bad in (["Men"], {"gender": []}, {"gender": [3]}, {"gender": {"x": 1}}):
        with pytest.raises(FilterError):
            facets.select(bad)
    assert facets.attributes_of("red") == {"baseColour"} and "gender" in facets.attributes_of("women")


def test_plan_keeps_masks_and_the_exact_scan_gathers_selective_ones():
    wide = np.zeros(1000, bool)
    wide[::2] = True
    narrow = np.zeros(1000, bool)
    narrow[:int(SUBSET_SHARE * 1000)] = True
    p = make_plan(2, 1000, 10, filters=wide)
    assert p.subset is None and p.mask[0] is p.mask[1] and selective_subset(p) is p
    p = selective_subset(make_plan(2, 1000, 10, filters=RowFilter(narrow)))
    assert p.mask is None and p.shared_subset and np.array_equal(p.subset[0], np.flatnonzero(narrow))
    p = make_plan(1, 1000, 100, exclude=[[0, 1, 2]], filters=narrow, subset=[0, 1, 2, 3, 500])
    assert p.k == 1 and p.subset[0].tolist() == [0, 1, 2, 3]     # k capped: one allowed row is left
    p = make_plan(2, 1000, 10, filters=[wide, None])
    assert p.mask[1] is None and p.allowed_rows(0).tolist() == list(range(0, 1000, 2))
    assert selective_subset(make_plan(2, 1000, 10, filters=[narrow, None])).subset is None
    with pytest.raises(ValueError, match="1000 rows"):
        make_plan(1, 1000, 10, filters=np.ones(5, bool))


@pytest.mark.parametrize("share", [0.5, 0.04, 0.001])
def test_exact_filtered_matches_dense(folder, share):
    path, x = folder
    idx = load_index(path)
    mask = np.random.default_rng(0).random(N) < share
    q = _queries(x, 6)
    excl = [[int(r)] for r in _dense(q, x, 1, mask)[1][:, 0]]
    k = min(10, int(mask.sum()) - 1)
    for b in (1, 6):      # one query (fp16 pass + rescore) and a batch (float32 blocks)
        s, i = search(q[:b], idx, 10, exclude=excl[:b], filters=mask)
        rs, ri = _dense(q[:b], x, k, mask, excl[:b])
        assert torch.equal(i, ri) and torch.allclose(s, rs, atol=1e-5)
    assert search(q, x, 5, filters=mask)[1].shape == (6, min(5, int(mask.sum())))   # a plain tensor too


def test_per_query_filters_and_boost(folder):
    path, x = folder
    idx = load_index(path)
    a, b = np.zeros(N, bool), np.zeros(N, bool)
    a[:N // 2], b[N // 2:] = True, True
    q = _queries(x, 2)
    _, i = search(q, idx, 10, filters=[a, b])
    assert (i[0] < N // 2).all() and (i[1] >= N // 2).all()

    class Lift:   # a boost lifting the last allowed rows: they rise, and no filtered-out row enters
        def adjust(self, rows: np.ndarray) -> np.ndarray:
            return np.where(rows >= N - 5, 10.0, 0.0)

        def __bool__(self) -> bool:
            return True

    _, i = search(q, idx, 10, filters=a, boost=Lift())
    assert (i < N // 2).all()
    _, i = search(q, idx, 10, filters=b, boost=Lift())
    assert set(i[0, :5].tolist()) == set(range(N - 5, N))


@pytest.mark.parametrize("spec", ["faiss:hnsw", "faiss:ivfpq"])
@pytest.mark.parametrize("share", [0.5, 0.2, 0.02, 0.005])
def test_faiss_filtered_recall(folder, tmp_path, share, spec):
    pytest.importorskip("faiss")
    path, x = folder
    idx = load_index(path, spec)
    mask = np.random.default_rng(1).random(N) < share
    q = _queries(x, 50, seed=5)
    _, i = search(q, idx, 10, filters=mask)
    _, ri = _dense(q, x, 10, mask)
    assert bool(mask[i.numpy()].all())
    assert ann_recall(i, ri) >= 0.9


def test_milvus_filtered(folder, tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    path = tmp_path_factory.mktemp("milvus") / "catalog-test"
    shutil.copytree(folder[0], path, ignore=shutil.ignore_patterns("faiss-*", ".faiss-*", "milvus.db*"))
    load_into_milvus(load_index(path), "milvus", progress=False)
    idx = load_index(path, "milvus")
    x = folder[1]
    q = _queries(x, 5, seed=7)
    for share in (0.7, 0.2):
        mask = np.random.default_rng(2).random(N) < share
        _, i = search(q, idx, 10, filters=mask)
        _, ri = _dense(q, x, 10, mask)
        assert bool(mask[i.numpy()].all()) and ann_recall(i, ri) >= 0.9

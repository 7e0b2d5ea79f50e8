"""Index backends behind index.search: the memory-mapped exact scan, faiss (HNSW, IVF-PQ) and Milvus
(milvus-lite), each checked against a dense float32 search; corrupt and stale files; the CLI; app health.

Data: 3,000 seeded random unit vectors of 64 dimensions, written as a real feature folder (the files and
manifest keys extract_features.py writes). Queries are stored rows moved by noise, like real queries that
are near, but not on, the catalogue.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cir import index as index_mod
from cir.cli.index import main as index_main
from cir.index import BackendUnavailable, FeatureIndex, IndexLoadError, StaleIndexError, ann_recall, load_index, search
from cir.index.backends.milvus import _row_count
from cir.serving.settings import Settings
from cir.utils import run_cli, save_tensors, write_json
from cir.web.app import create_app

N, DIM = 3000, 64


def queries(x: torch.Tensor, count: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, len(x), (count,), generator=g)
    return F.normalize(x[rows].float() + 0.5 * F.normalize(torch.randn(count, x.shape[1], generator=g), dim=1), dim=1)


def dense(q: torch.Tensor, x: torch.Tensor, k: int, exclude=None, subset=None):
    """The reference: the project's original dense search (one float32 product, -inf for excluded rows)."""
    scores = q.float() @ x.float().T
    if subset is not None:
        keep = torch.full_like(scores, float("-inf"))
        keep[:, subset] = 0
        scores = scores + keep
    most = 0
    for row, ex in enumerate(exclude or []):
        ids = sorted({ex} if isinstance(ex, int) else set(ex or ()))
        if ids:
            scores[row, ids] = float("-inf")
            most = max(most, len(ids))
    top = torch.topk(scores, min(k, x.shape[0] - most), dim=1)
    return top.values, top.indices


@pytest.fixture(scope="module")
def folder(tmp_path_factory, write_folder) -> tuple[Path, torch.Tensor]:
    path = tmp_path_factory.mktemp("features") / "catalog-test"
    return path, write_folder(path)


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("faiss-*", ".faiss-*", "milvus.db*"))
    return dst


# ----------------------------------------------------------------------------------------------- exact

def test_exact_is_memory_mapped_and_matches_dense_search(folder):
    path, x = folder
    idx = load_index(path)
    # No copy: the tensor is a view of the file's mapping (shared with the page cache).
    assert isinstance(idx.mapped, np.memmap) and np.shares_memory(idx.features.numpy(), idx.mapped)
    assert idx.features.dtype == torch.float16 and idx.features.shape == (N, DIM) and idx.unit_rows
    assert idx._f32 is None
    q = queries(x, 40)
    excl = [[i, (i * 7) % N] for i in range(40)]
    for b in (1, 3, 40):  # 1 and 3 take the fp16 pass + float32 rescoring, 40 the float32 blocks
        for ex in (None, excl[:b]):
            s, i = search(q[:b], idx, 10, exclude=ex)
            rs, ri = dense(q[:b], x, 10, exclude=ex)
            assert torch.equal(i, ri), (b, ex is not None)
            assert torch.allclose(s, rs, atol=1e-5)
    assert idx._f32 is None  # search never made the float32 copy
    # Small blocks (many merges) give the same answer.
    small = load_index(path, "exact?block=100&block16=77")
    assert torch.equal(search(q, small, 10)[1], dense(q, x, 10)[1])
    assert torch.equal(search(q[:2], small, 10)[1], dense(q[:2], x, 10)[1])
    for b in (1, 5):   # k past the index size: every row, still best first, across blocks
        s, i = search(q[:b], small, 10 * N)
        assert i.shape == (b, N) and (s[:, :-1] >= s[:, 1:]).all() and len(set(i[0].tolist())) == N


def test_exact_fp16_pass_handles_ties(tmp_path, write_folder):
    """Many identical rows: the fp16 pass cannot separate them and falls back to float32 for that query."""
    x = write_folder(tmp_path, n=500)
    x[:60] = x[0]
    save_tensors(tmp_path / "features.safetensors", {"features": x})
    idx = load_index(tmp_path)
    s, i = search(x[:1].float(), idx, 10, exclude=[[0]])
    assert set(i[0].tolist()) <= set(range(1, 60)) and len(set(i[0].tolist())) == 10
    assert torch.allclose(s, dense(x[:1].float(), x, 10, exclude=[[0]])[0], atol=1e-5)


def test_exclude_and_subset(folder):
    path, x = folder
    idx = load_index(path)
    q = queries(x, 4)
    group = [5, 17, 300, 301, 1200, 2999]
    s, i = search(q, idx, 10, subset=group, exclude=[[17], None, [5, 300], 999])
    assert i.shape == (4, 4)  # capped: query 2 may only get 4 of the 6 rows
    for row, ex in enumerate([[17], [], [5, 300], [999]]):
        assert set(i[row].tolist()) <= set(group) - set(ex)
    rs, ri = dense(q, x, 4, subset=group, exclude=[[17], None, [5, 300], 999])
    assert torch.equal(i, ri) and torch.allclose(s, rs, atol=1e-5)
    # One list per query; a plain tensor index takes subsets too.
    s, i = search(q[:2], idx, 3, subset=[[1, 2, 3], [4, 5, 6, 7]])
    assert set(i[0].tolist()) == {1, 2, 3} and set(i[1].tolist()) <= {4, 5, 6, 7}
    assert torch.equal(search(q[:2], x, 3, subset=[[1, 2, 3], [4, 5, 6, 7]])[1], i)
    # k reaching past the excluded rows is capped so they never come back.
    _, i = search(q[:1], idx, 10 * N, exclude=[[0, 1, 2]])
    assert i.shape == (1, N - 3) and not {0, 1, 2} & set(i[0].tolist())
    with pytest.raises(ValueError, match="out of range"):
        search(q[:1], idx, 3, subset=[N])
    with pytest.raises(ValueError, match="subset has 3 entries for 2 queries"):
        search(q[:2], idx, 3, subset=[[1], [2], [3]])
    with pytest.raises(ValueError, match="exclude"):
        search(q[:2], idx, 3, exclude=[0])


def test_corrupt_and_truncated_files_fail_at_load(folder, tmp_path):
    path, _ = folder
    data = (path / "features.safetensors").read_bytes()
    bad = copy_folder(path, tmp_path / "bad")
    f = bad / "features.safetensors"
    f.write_bytes(data[: len(data) - 1000])
    with pytest.raises(IndexLoadError, match=r"features.safetensors is truncated or corrupt: the header promises"):
        load_index(bad)
    f.write_bytes(data[:5])
    with pytest.raises(IndexLoadError, match="not even a safetensors header"):
        load_index(bad)
    f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + data[100:])
    with pytest.raises(IndexLoadError, match="header is not valid JSON"):
        load_index(bad)
    f.write_bytes(data[:-N * DIM] + b"\xff" * (N * DIM))  # the last rows become NaN
    with pytest.raises(IndexLoadError, match="NaN or infinite"):
        load_index(bad)
    f.write_bytes(data)
    write_json(bad / "manifest.json", {"dim": DIM, "count": N + 1})
    with pytest.raises(IndexLoadError, match="manifest says 3001 features"):
        load_index(bad)
    write_json(bad / "manifest.json", {"dim": DIM + 1})
    with pytest.raises(IndexLoadError, match="manifest says dim 65"):
        load_index(bad)


def test_backend_specs():
    p = index_mod.parse_backend("faiss:hnsw?M=16&efSearch=40")
    assert (p.kind, p.target, p.get("M"), p.get("efSearch")) == ("faiss", "hnsw", 16, 40)
    p = index_mod.parse_backend("milvus:http://db:19530?token=secret&db=prod")
    assert (p.target, p.get("db")) == ("http://db:19530", "prod") and "secret" not in p.public
    assert index_mod.parse_backend(None).kind == "exact"
    for bad, words in [("annoy", "unknown index backend"), ("faiss:lsh", "unknown faiss index kind"),
                       ("faiss?M=x", "must be int"), ("exact?efSearch=3", "unknown parameter")]:
        with pytest.raises(ValueError, match=words):
            index_mod.parse_backend(bad)


# ----------------------------------------------------------------------------------------------- faiss

@pytest.mark.parametrize("kind", ["hnsw", "ivfpq"])
def test_faiss_recall_reuse_and_stale_rebuild(folder, tmp_path, kind, write_folder):
    pytest.importorskip("faiss")
    path = copy_folder(folder[0], tmp_path / "idx")
    x = folder[1]
    idx = load_index(path, f"faiss:{kind}")
    b = idx.backend
    assert isinstance(b, index_mod.FaissBackend) and b.ann_kind == kind and not b.reused
    assert b.meta["recall@10"] >= 0.9 and b.meta["build_seconds"] >= 0
    saved = list(path.glob(f"faiss-{kind}-*.index"))
    assert len(saved) == 1 and json.loads(saved[0].with_suffix(".json").read_text())["fingerprint"] == idx.fingerprint
    q = queries(x, 50, seed=7)
    excl = [[int(r)] for r in dense(q, x, 1)[1][:, 0]]   # each query's nearest row is excluded
    s, i = search(q, idx, 10, exclude=excl)
    _, truth = dense(q, x, 10, exclude=excl)
    assert ann_recall(i, truth) >= 0.9
    assert all(e[0] not in row for e, row in zip(excl, i.tolist()))
    assert (s[:, :-1] >= s[:, 1:]).all()
    # subset: exact, from the mapped features
    rows = [10, 20, 30, 40]
    assert torch.equal(search(q[:3], idx, 3, subset=rows)[1], dense(q[:3], x, 3, subset=rows)[1])
    # reopened: the saved index is reused, same answers
    again = load_index(path, f"faiss:{kind}")
    assert again.backend.reused and torch.equal(search(q, again, 10, exclude=excl)[1], i)
    # features re-extracted: the saved index is stale and rebuilt
    write_folder(path, seed=3)
    fresh = load_index(path, f"faiss:{kind}")
    assert not fresh.backend.reused and fresh.backend.meta["fingerprint"] == fresh.fingerprint != idx.fingerprint


def test_faiss_auto_picks_hnsw_and_tiny_indexes_fall_back(tmp_path, write_folder):
    pytest.importorskip("faiss")
    x = write_folder(tmp_path / "tiny", n=12)
    idx = load_index(tmp_path / "tiny", "faiss")
    assert idx.backend.ann_kind == "hnsw"
    _, i = search(x[:2].float(), idx, 50, exclude=[[0], [1, 2]])
    assert i.shape == (2, 10) and 0 not in i[0].tolist() and not {1, 2} & set(i[1].tolist())


def test_cli_check_build_help(folder, tmp_path, capsys):
    pytest.importorskip("faiss")
    path = copy_folder(folder[0], tmp_path / "idx")
    assert index_main(["check", "--features", str(path)]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["rows"] == N and out["dim"] == DIM and out["memory_mapped"]
    assert index_main(["build", "--features", str(path), "--backend", "faiss:hnsw?M=16"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["kind"] == "hnsw" and out["recall@10"] >= 0.9 and "efSearch" in out["search_params"]
    assert run_cli(lambda: index_main(["check", "--features", str(tmp_path / "nope")])) == 2
    with pytest.raises(SystemExit) as e:
        index_main(["--help"])
    assert e.value.code == 0
    help_text = capsys.readouterr().out
    assert all(w in help_text for w in ("check", "build", "load"))
    with pytest.raises(SystemExit):
        index_main(["load", "--help"])
    help_text = capsys.readouterr().out
    assert all(w in help_text for w in ("--features", "--to", "--batch", "--index-type", "--replace"))


# ----------------------------------------------------------------------------------------------- milvus

@pytest.fixture(scope="module")
def milvus_folder(folder, tmp_path_factory):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    return copy_folder(folder[0], tmp_path_factory.mktemp("milvus") / "catalog-test")


def _count(path: Path) -> int:
    idx = load_index(path)
    client = index_mod.milvus_client(str(path / "milvus.db"), index_mod.parse_backend("milvus"))
    return _row_count(client, index_mod.collection_name(idx))


def test_milvus_load_is_resumable_and_idempotent(milvus_folder, capsys):
    idx = load_index(milvus_folder)
    with pytest.raises(KeyboardInterrupt):   # killed after the first 1,000 rows
        index_mod.load_into_milvus(idx, "milvus", batch=500, progress=False, _stop_after_rows=1000)
    assert _count(milvus_folder) == 1000
    with pytest.raises(IndexLoadError, match=r"only partly loaded; run `python3 -m cir.index load"):
        load_index(milvus_folder, "milvus")
    assert index_main(["load", "--features", str(milvus_folder), "--to", "milvus", "--batch", "500",
                           "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["resumed_from"] == 1000 and out["inserted"] == N - 1000 and _count(milvus_folder) == N
    assert index_main(["load", "--features", str(milvus_folder), "--to", "milvus", "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["already_loaded"] and out["inserted"] == 0 and _count(milvus_folder) == N


def test_milvus_search_matches_exact(milvus_folder):
    x = load_index(milvus_folder).features
    if _count(milvus_folder) != N:
        index_mod.load_into_milvus(load_index(milvus_folder), "milvus", progress=False)
    idx = load_index(milvus_folder, "milvus")
    assert idx.backend.health()["ok"]
    q = queries(x, 30, seed=11)
    excl = [[int(r)] for r in dense(q, x, 1)[1][:, 0]]
    s, i = search(q, idx, 10, exclude=excl)
    rs, ri = dense(q, x, 10, exclude=excl)
    assert ann_recall(i, ri) >= 0.9
    assert all(e[0] not in row for e, row in zip(excl, i.tolist()))
    assert torch.allclose(s[:, 0], rs[:, 0], atol=1e-3)
    group = [5, 17, 300, 301, 1200, 2999]
    _, i = search(q[:2], idx, 10, subset=group, exclude=[[17], None])
    _, ri = dense(q[:2], x, 5, subset=group, exclude=[[17], None])
    assert i.shape == (2, 5) and torch.equal(i, ri)


def test_milvus_stale_and_unreachable(milvus_folder, tmp_path, write_folder):
    path = tmp_path / "small"
    write_folder(path, n=300)
    index_mod.load_into_milvus(load_index(path), "milvus", progress=False)
    assert load_index(path, "milvus").backend.health()["ok"]
    write_folder(path, n=300, seed=5)  # re-extracted since the load
    with pytest.raises(StaleIndexError, match=r"stale\); run `python3 -m cir.index load --features .* --to milvus`"):
        load_index(path, "milvus")
    out = index_mod.load_into_milvus(load_index(path), "milvus", progress=False)   # the fix replaces it
    assert out["replaced_stale"] and out["inserted"] == 300 and load_index(path, "milvus").backend.health()["ok"]
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable, match="Milvus at http://127.0.0.1:1 is unreachable"):
        load_index(path, "milvus:http://127.0.0.1:1")
    assert time.monotonic() - t0 < 10
    # A server keeps the dataset, reports it, and refuses its searches with the reason.
    idx = index_mod.open_backend_or_placeholder(load_index(path), "milvus:http://127.0.0.1:1")
    assert idx.backend.health()["ok"] is False and "unreachable" in idx.backend.health()["message"]
    with pytest.raises(BackendUnavailable, match="unreachable"):
        search(torch.zeros(1, DIM), idx, 3)


def test_milvus_lite_file_in_use_by_another_process(folder, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    import fcntl
    path = copy_folder(folder[0], tmp_path / "busy")
    (path / "milvus.db").mkdir()
    with open(path / "milvus.db" / "LOCK", "w") as held:   # what a running server holds
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BackendUnavailable, match="in use by another process .* Milvus server"):
            load_index(path, "milvus")


def test_milvus_missing_package_or_collection_is_clear(folder, tmp_path):
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    path = copy_folder(folder[0], tmp_path / "fresh")
    with pytest.raises(IndexLoadError, match="has no collection cir_fresh .* run `python3 -m cir.index load"):
        load_index(path, "milvus")


# ----------------------------------------------------------------------------------------------- app health

def test_app_health_reports_backends(demo_world, tmp_path):
    pytest.importorskip("pymilvus")
    ok = create_app(Settings(**demo_world, upload_dir=tmp_path / "u1", warm_up=False))
    h = ok.test_client().get("/api/health").get_json()
    assert h["status"] == "ok" and h["backends"]["catalog-test"]["backend"] == "exact"
    assert h["backends"]["catalog-test"]["ok"] and "mapped" in h["backends"]["catalog-test"]

    bad = create_app(Settings(**demo_world, upload_dir=tmp_path / "u2", index_backend="milvus:http://127.0.0.1:1"))
    client = bad.test_client()
    h = client.get("/api/health").get_json()
    assert h["status"] == "degraded" and set(h["datasets"]) == {"catalog-test", "cirr-val"}
    assert not h["backends"]["catalog-test"]["ok"] and "unreachable" in h["backends"]["catalog-test"]["message"]
    ref = bad.extensions["cir"].datasets["catalog-test"].index.names[0]
    r = client.post("/api/search", json={"dataset": "catalog-test", "mode": "image", "reference": ref})
    assert r.status_code == 503 and "unreachable" in r.get_json()["message"]
    assert r.headers["Retry-After"] == "5"
    assert client.get("/api/datasets").status_code == 200   # browsing still works


def test_in_memory_index_defaults_to_exact():
    x = F.normalize(torch.randn(20, 8), dim=1)
    idx = FeatureIndex(x.half(), [str(i) for i in range(20)])
    assert index_mod.with_backend(idx, "exact") is idx and isinstance(idx.backend, index_mod.ExactBackend)
    assert torch.equal(search(x[:2], idx, 5)[1], dense(x[:2], x.half(), 5)[1])

"""cir.hub: the authors' released Combiners, fetched into torch.hub's cache. No network: the release table points
at file:// URLs of tiny original-format checkpoints ({'Combiner': state_dict}, as CLIP4Cir saves)."""
from __future__ import annotations

import http.client
import io

import pytest
import torch

import hubconf
from cir import hub
from cir.combiner import Combiner, CombinerConfig
from cir.paths import REPO_DIR
from cir.utils import sha256_file

TINY = CombinerConfig(feature_dim=8, projection_dim=12, hidden_dim=16)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A tiny released-format Combiner behind a file:// URL as the 'cirr' release; (its module, file, cache)."""
    ref = Combiner(TINY)
    src = tmp_path / "server" / "cirr_combiner.pth"
    src.parent.mkdir()
    torch.save({"epoch": 3, "Combiner": ref.state_dict()}, src)
    rel = hub.Release(src.as_uri(), "cirr_combiner", sizes=(8, 12, 16))
    monkeypatch.setitem(hub.RELEASED_COMBINERS, "cirr", rel)
    return ref, src, tmp_path / "cache"


def same_weights(a: Combiner, b: Combiner) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def files(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_loads_the_original_keys_and_caches_the_file(served):
    ref, src, cache = served
    model = hub.released_combiner("cirr", model_dir=cache, progress=False)
    assert same_weights(model, ref) and not model.training
    assert model.cfg.encoder == "openai:RN50x4" and model.cfg.inputs == "raw"
    assert files(cache) == ["cirr_combiner"]   # the demo's cache name; no temporary file left
    assert sha256_file(cache / "cirr_combiner") == sha256_file(src)


def test_a_cached_file_is_not_downloaded_again(served, monkeypatch):
    ref, src, cache = served
    hub.released_combiner("cirr", model_dir=cache, progress=False)

    def no_network(*a, **k):
        raise AssertionError("downloaded again")
    monkeypatch.setattr(hub.urllib.request, "urlopen", no_network)
    src.unlink()
    assert same_weights(hub.released_combiner("CIRR", model_dir=cache, sha256=sha256_file(cache / "cirr_combiner")),
                        ref)


def test_checksum_pins_the_download_and_the_cache(served):
    ref, src, cache = served
    with pytest.raises(hub.DownloadError, match="sha256 .* not 0000"):
        hub.released_combiner("cirr", model_dir=cache, sha256="0" * 64, progress=False)
    assert files(cache) == []
    good = sha256_file(src)
    assert same_weights(hub.released_combiner("cirr", model_dir=cache, sha256=good.upper(), progress=False), ref)
    with pytest.raises(hub.DownloadError, match="cached .* delete it"):   # a cached file of another checksum
        hub.released_combiner("cirr", model_dir=cache, sha256="f" * 64)
    with pytest.raises(ValueError, match="64 hexadecimal"):
        hub.released_combiner("cirr", model_dir=cache, sha256="abc")


def test_a_truncated_file_is_refused_and_not_kept(served):
    _, src, cache = served
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])   # what a server that stops early, with no length, leaves
    with pytest.raises(hub.DownloadError, match="not a CLIP4Cir Combiner checkpoint.*not kept"):
        hub.released_combiner("cirr", model_dir=cache, progress=False)
    assert files(cache) == []


class _Response(io.BytesIO):
    """An HTTP response that promises `length` bytes and sends `body` (then, optionally, breaks off)."""

    def __init__(self, body: bytes, length: int, broken: bool = False):
        super().__init__(body)
        self.headers, self.broken = {"Content-Length": str(length)}, broken

    def read(self, n: int = -1) -> bytes:
        block = super().read(n)
        if not block and self.broken:
            raise http.client.IncompleteRead(b"", 10)
        return block


@pytest.mark.parametrize("broken", [False, True])
def test_a_short_body_is_refused_and_not_kept(served, monkeypatch, broken):
    _, src, cache = served
    data = src.read_bytes()
    monkeypatch.setattr(hub.urllib.request, "urlopen",
                        lambda *a, **k: _Response(data[:100], len(data), broken))
    with pytest.raises(hub.DownloadError, match="truncated|cut off"):
        hub.released_combiner("cirr", model_dir=cache, progress=True)
    assert files(cache) == []


def test_a_combiner_of_other_sizes_is_refused(served, monkeypatch):
    _, src, cache = served
    monkeypatch.setitem(hub.RELEASED_COMBINERS, "cirr", hub.Release(src.as_uri(), "cirr_combiner"))  # RN50x4 sizes
    with pytest.raises(hub.DownloadError, match=r"sizes \(8, 12, 16\), not the release's \(640, 2560, 5120\)"):
        hub.released_combiner("cirr", model_dir=cache, progress=False)
    assert files(cache) == []


def test_unknown_dataset_and_the_demos_spelling():
    with pytest.raises(ValueError, match="cirr, fashioniq"):
        hub.release("shoes")
    assert hub.release("fashionIQ").file_name == "fashionIQ_combiner"   # the original demo's name and cache file
    assert all(r.url.startswith("https://") and r.sizes == (640, 2560, 5120) for r in hub.RELEASED_COMBINERS.values())


def test_default_cache_is_torch_hubs(served, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    hub.released_combiner("cirr", progress=False)
    assert hub.cache_dir() == tmp_path / "th" / "hub" / "checkpoints"
    assert files(hub.cache_dir()) == ["cirr_combiner"]


def test_hubconf_dataset_entry_point(served, tmp_path):
    ref, _, cache = served
    assert same_weights(hubconf.combiner(dataset="cirr", model_dir=cache, progress=False), ref)
    fuse = torch.hub.load(str(REPO_DIR), "combiner", dataset="cirr", model_dir=str(cache), source="local")
    assert same_weights(fuse, ref)
    with pytest.raises(ValueError, match="not both"):
        hubconf.combiner("combiner", dataset="cirr")
    with pytest.raises(ValueError, match="dataset='cirr' or 'fashioniq'"):
        hubconf.combiner("cirr")

"""hubconf.combiner: the shipped Combiners by short name, our safetensors and original CLIP4Cir .pt checkpoints
by path, the error for an unknown name, and the entry point through torch.hub.load(source="local")."""
from __future__ import annotations

import pytest
import torch

import hubconf
from cir.combiner import SHIPPED_COMBINERS, Combiner, CombinerConfig
from cir.paths import REPO_DIR

REPO = REPO_DIR
TINY = CombinerConfig(feature_dim=8, projection_dim=12, hidden_dim=16)


def same_weights(a: Combiner, b: Combiner) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.mark.parametrize("name", list(SHIPPED_COMBINERS))
def test_shipped_combiner_loads(name):
    model = hubconf.combiner(name)
    assert isinstance(model, Combiner) and not model.training
    assert same_weights(model, Combiner.load(SHIPPED_COMBINERS[name]))
    d = model.cfg.feature_dim
    out = model.combine_features(torch.randn(2, d), torch.randn(2, d))
    assert out.shape == (2, d) and torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_default_is_the_shipped_combiner():
    assert same_weights(hubconf.combiner(), Combiner.load(SHIPPED_COMBINERS["combiner"]))


def test_original_pt_checkpoint_loads_with_sizes_inferred(tmp_path):
    ref = Combiner(TINY)
    path = tmp_path / "cirr_combiner.pt"
    torch.save({"Combiner": ref.state_dict()}, path)  # what CLIP4Cir's combiner_train.py saves
    model = hubconf.combiner(str(path))
    assert (model.cfg.feature_dim, model.cfg.projection_dim, model.cfg.hidden_dim) == (8, 12, 16)
    assert same_weights(model, ref) and not model.training


def test_our_safetensors_checkpoint_loads_by_path(tmp_path):
    ref = Combiner(TINY)
    ref.save(tmp_path / "mine.safetensors")
    model = hubconf.combiner(str(tmp_path / "mine.safetensors"))
    assert model.cfg.hidden_dim == 16
    assert all(torch.equal(v.half().float(), model.state_dict()[k]) for k, v in ref.state_dict().items())


def test_unknown_name_lists_the_valid_ones(tmp_path):
    for bad in ("cirr", str(tmp_path / "missing.pt")):
        with pytest.raises(ValueError) as e:
            hubconf.combiner(bad)
        assert all(n in str(e.value) for n in SHIPPED_COMBINERS) and "path" in str(e.value)


def test_torch_hub_load_local(tmp_path):
    model = torch.hub.load(str(REPO), "combiner", source="local")
    assert isinstance(model, torch.nn.Module) and type(model).__name__ == "Combiner"
    assert model.cfg.feature_dim == Combiner.load(SHIPPED_COMBINERS["combiner"]).cfg.feature_dim
    path = tmp_path / "orig.pt"
    torch.save({"Combiner": Combiner(TINY).state_dict()}, path)
    assert torch.hub.load(str(REPO), "combiner", name=str(path), source="local").cfg.projection_dim == 12


def test_hub_entry_point_lists_names_on_error():
    assert "lite" in hubconf.available_models()
    with pytest.raises(ValueError, match="valid names"):
        hubconf.encoder("no-such-model")

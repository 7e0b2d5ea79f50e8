"""The Combiner: shapes, λ range, checkpoint formats (ours and the original CLIP4Cir), combine methods."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cir.combiner import COMBINE_METHODS, Combiner, CombinerConfig, combine

SMALL = CombinerConfig(feature_dim=16, projection_dim=32, hidden_dim=48)


def _feats(b=5, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=-1), F.normalize(torch.randn(b, d, generator=g), dim=-1)


def test_shapes_norm_and_lambda_range():
    torch.manual_seed(0)
    m = Combiner(SMALL).eval()
    img, txt = _feats()
    out = m.combine_features(img, txt)
    assert out.shape == (5, 16)
    assert torch.allclose(out.norm(dim=-1), torch.ones(5), atol=1e-5)
    lam = m.mixing_weight(img, txt)
    assert lam.shape == (5, 1) and ((lam > 0) & (lam < 1)).all()
    logits = m(img, txt, img)
    assert logits.shape == (5, 5) and logits.abs().max() <= 100 + 1e-4


def test_output_is_the_papers_formula():
    torch.manual_seed(1)
    m = Combiner(SMALL).eval()
    img, txt = _feats(seed=1)
    t = F.relu(m.text_projection_layer(txt))
    i = F.relu(m.image_projection_layer(img))
    joint = torch.cat((t, i), -1)
    lam = torch.sigmoid(m.dynamic_scalar[3](F.relu(m.dynamic_scalar[0](joint))))
    fused = m.output_layer(F.relu(m.combiner_layer(joint)))
    assert torch.allclose(m.combine_features(img, txt), F.normalize(fused + lam * txt + (1 - lam) * img, dim=-1),
                          atol=1e-6)


def test_the_text_residual_adds_the_captions_own_score_and_survives_a_round_trip(tmp_path):
    from dataclasses import replace
    torch.manual_seed(0)
    plain = Combiner(SMALL).eval()
    kept = Combiner(replace(SMALL, text_residual=2.0)).eval()
    kept.load_state_dict(plain.state_dict())
    img, txt = _feats()
    base = plain.combine_features(img, txt)
    out = kept.combine_features(img, 3 * txt)  # raw text of any norm: the residual is its unit vector
    assert torch.allclose(out, F.normalize(plain.combine_features(img, 3 * txt) + 2 * txt, dim=-1), atol=1e-5)
    assert ((out * txt).sum(1) > (base * txt).sum(1)).all()  # the caption's share cannot be dropped
    kept.save(tmp_path / "r.safetensors")
    assert Combiner.load(tmp_path / "r.safetensors").cfg.text_residual == 2.0
    assert CombinerConfig().text_residual == 0.0  # the papers' Combiner unless trained otherwise


def test_original_clip4cir_checkpoint_loads(tmp_path):
    torch.manual_seed(2)
    ref = Combiner(SMALL).eval()
    torch.save({"epoch": 7, "Combiner": ref.state_dict()}, tmp_path / "combiner_arithmetic.pt")
    m = Combiner.load(tmp_path / "combiner_arithmetic.pt")
    assert m.cfg.feature_dim == 16 and m.cfg.projection_dim == 32 and m.cfg.hidden_dim == 48
    img, txt = _feats()
    assert torch.equal(m.combine_features(img, txt), ref.combine_features(img, txt))
    torch.save(ref.state_dict(), tmp_path / "bare.pth")  # a bare state dict works too
    assert Combiner.load(tmp_path / "bare.pth").cfg.hidden_dim == 48


def test_rn50x4_sizes_are_inferred():
    names = {"text_projection_layer.weight": (2560, 640), "combiner_layer.weight": (5120, 5120)}
    cfg = CombinerConfig.from_state_dict({k: torch.empty(s, device="meta") for k, s in names.items()})
    assert (cfg.feature_dim, cfg.projection_dim, cfg.hidden_dim) == (640, 2560, 5120)
    with torch.device("meta"):
        m = Combiner(cfg)
    assert set(m.state_dict()) >= {"text_projection_layer.weight", "image_projection_layer.bias",
                                   "dynamic_scalar.0.weight", "dynamic_scalar.3.bias", "output_layer.weight"}


def test_safetensors_round_trip_and_bad_files(tmp_path):
    torch.manual_seed(3)
    m = Combiner(SMALL).eval()
    m.save(tmp_path / "c.safetensors")
    assert (tmp_path / "c.json").exists()
    m2 = Combiner.load(tmp_path / "c.safetensors")
    img, txt = _feats()
    # Weights are stored in float16: equal to the model rounded to float16, close to the original.
    m.load_state_dict({k: v.half().float() for k, v in m.state_dict().items()})
    assert torch.equal(m.combine_features(img, txt), m2.combine_features(img, txt))
    assert m2.text_projection_layer.weight.dtype == torch.float32
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a Combiner checkpoint"):
        Combiner.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        Combiner.load(tmp_path / "missing.pt")


def test_combine_methods():
    img, txt = _feats()
    assert torch.allclose(combine(img, txt, "sum"), F.normalize(img + txt, dim=-1), atol=1e-6)
    assert torch.allclose(combine(img * 3, txt, "image"), img, atol=1e-6)
    assert torch.allclose(combine(img, txt, "text"), txt, atol=1e-6)
    m = Combiner(SMALL).eval()
    assert torch.allclose(combine(img, txt, "combiner", m), m.combine_features(img, txt))
    with pytest.raises(ValueError, match="needs a trained Combiner"):
        combine(img, txt, "combiner")
    with pytest.raises(ValueError, match="valid: combiner, sum, image, text"):
        combine(img, txt, "product")
    assert COMBINE_METHODS == ("combiner", "sum", "image", "text")


def _damaged(tmp_path, kind: str):
    """A Combiner checkpoint damaged one way; returns its path."""
    torch.manual_seed(4)
    path = tmp_path / kind / "c.safetensors"
    path.parent.mkdir()
    m = Combiner(SMALL)
    if kind == "nan":   # a valid header, NaN weights: what a damaged disk or a diverged run can leave
        with torch.no_grad():
            m.output_layer.weight[0, 0] = float("nan")
    m.save(path)
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(b"\x00\xff" * 500)
    elif kind == "bad-json":
        path.with_suffix(".json").write_text("{not json")
    elif kind == "text-file":   # `--combiner /etc/passwd`: read as an original checkpoint
        path = path.with_name("passwd")
        path.write_text("root:x:0:0:root:/root:/bin/bash\n")
    elif kind == "directory":
        path = path.with_name("dir.pt")
        path.mkdir()
    return path


@pytest.mark.parametrize("kind, words", [
    ("truncated", "is damaged: not a readable safetensors file"), ("garbage", "not a readable safetensors file"),
    ("nan", "holds NaN or infinite values"), ("bad-json", "combiner config"),
    ("text-file", "is not a Combiner checkpoint"), ("directory", "is not a regular file")])
def test_a_damaged_checkpoint_is_one_clear_error_naming_it(tmp_path, kind, words):
    path = _damaged(tmp_path, kind)
    with pytest.raises(ValueError, match=words) as e:
        Combiner.load(path)
    shown = str(path.with_suffix(".json") if kind == "bad-json" else path)
    assert shown in str(e.value) and "\n" not in str(e.value)

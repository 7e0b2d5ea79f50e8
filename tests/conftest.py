"""Shared fixtures: where the shared data lives, one real lite encoder per test session, and the small demo
world the web tests serve. Test files never import from here: they ask for fixtures."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from cir import encoders
from cir.combiner import Combiner, CombinerConfig
from cir.data import catalog_images, cirr_images
from cir.encoders import TextCheckpointInfo
from cir.extraction import ensure_index
from cir.paths import DEFAULT_DATA_ROOT
from cir.utils import save_checkpoint, save_tensors, write_json

CATALOG = DEFAULT_DATA_ROOT / "fashion-catalog"
CIRR_FORMATS = DEFAULT_DATA_ROOT / "formats" / "cirr_dataset"


@pytest.fixture(scope="session")
def catalog_root() -> Path:
    """The shared catalogue (styles.csv + images/); tests needing it skip where it is absent."""
    if not (CATALOG / "styles.csv").exists():
        pytest.skip(f"the catalogue is not at {CATALOG}")
    return CATALOG


@pytest.fixture(scope="session")
def cirr_formats() -> Path:
    """The real CIRR annotation files (cirr_dataset/cirr/{captions,image_splits}), no images."""
    if not (CIRR_FORMATS / "cirr" / "captions").is_dir():
        pytest.skip(f"the CIRR annotation files are not at {CIRR_FORMATS}")
    return CIRR_FORMATS


@pytest.fixture(scope="session")
def lite_encoder():
    """The shipped offline encoder, loaded once per session."""
    return encoders.load("lite", "cpu")


# ----------------------------------------------------------------------------------------------- web demo

DEMO_CATALOG_IMAGES = 60   # the demo tests search the first 60 catalogue test images: big enough for 24 results
DEMO_CIRR_GROUPS = 2       # and two real CIRR val img_set groups, drawn as placeholder images


def _fake_cirr(root: Path) -> None:
    """A CIRR val layout holding the first img_set groups of the real annotation file, with generated PNGs."""
    triplets = json.loads((CIRR_FORMATS / "cirr" / "captions" / "cap.rc2.val.json").read_text())
    sets: dict[int, list] = {}
    for t in triplets:
        if len(sets) < DEMO_CIRR_GROUPS or t["img_set"]["id"] in sets:
            sets.setdefault(t["img_set"]["id"], []).append(t)
    kept = [t for ts in sets.values() for t in ts]
    names = sorted({m for t in kept for m in t["img_set"]["members"]} | {t["reference"] for t in kept})
    (root / "cirr" / "captions").mkdir(parents=True)
    (root / "cirr" / "image_splits").mkdir(parents=True)
    (root / "dev").mkdir()
    for i, n in enumerate(names):
        im = Image.new("RGB", (96, 72), ((i * 67) % 256, (i * 131) % 256, (i * 29) % 256))
        ImageDraw.Draw(im).ellipse((10 + i, 10, 60 + i, 60), fill=((i * 17) % 256, 255 - (i * 40) % 256, 90))
        im.save(root / "dev" / f"{n}.png")
    (root / "cirr" / "captions" / "cap.rc2.val.json").write_text(json.dumps(kept))
    (root / "cirr" / "image_splits" / "split.rc2.val.json").write_text(
        json.dumps({n: f"./dev/{n}.png" for n in names}))


@pytest.fixture(scope="session")
def demo_world(tmp_path_factory, catalog_root, lite_encoder):
    """Everything a small demo app needs, built once: feature indexes (60 catalogue test images, a tiny
    CIRR val set), two tiny random Combiners (one paired with a stage-1 text checkpoint) and that checkpoint.

    Returns the keyword arguments of serving.settings.Settings, except upload_dir (each app gets its own).
    """
    base = tmp_path_factory.mktemp("demo")
    features = base / "features"
    records = catalog_images(catalog_root, "test")[:DEMO_CATALOG_IMAGES]
    ensure_index(records, lite_encoder, features / "catalog-test", workers=0,
                 info={"dataset": "catalog", "split": "test", "data_root": str(catalog_root)})
    cirr_root = base / "cirr_dataset"
    _fake_cirr(cirr_root)
    ensure_index(cirr_images(cirr_root, "val"), lite_encoder, features / "cirr-val", workers=0,
                 info={"dataset": "cirr", "split": "val", "data_root": str(cirr_root)})

    weights = base / "weights"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        # A "stage-1" text side: the shipped text head, perturbed so its results differ from base.
        sd = {k: v.half() for k, v in lite_encoder.state_dict().items() if k.startswith("heads.text.")}
        sd = {k: (v.float() + 0.05 * torch.randn_like(v.float())).half() for k, v in sd.items()}
        stage1 = weights / "text-s1.safetensors"
        save_checkpoint(stage1, sd, TextCheckpointInfo("lite", ["heads.text."], {}), "text-encoder")
        tiny = CombinerConfig(feature_dim=lite_encoder.dim, projection_dim=32, hidden_dim=64, encoder="lite")
        Combiner(tiny).save(weights / "c.safetensors")
        Combiner(CombinerConfig(**{**tiny.__dict__, "text_encoder": str(stage1)})).save(weights / "c-s1.safetensors")
    return {"features_root": features, "encoder_obj": lite_encoder, "default_dataset": "catalog-test",
            "combiners": {"tiny": str(weights / "c.safetensors"), "tiny-s1": str(weights / "c-s1.safetensors")},
            "text_checkpoints": {"stage1": str(stage1)}, "data_root": None}


# ----------------------------------------------------------------------------------------------- a tiny CLIP

PROJ_DIM, IMAGE_SIZE, MAX_POS = 16, 32, 32
PP_MEAN, PP_STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]   # not CLIP's: shows that the model folder's are honoured


@pytest.fixture(scope="session")
def tiny_clip_sizes() -> dict:
    """The tiny CLIP's sizes and normalisation: projection_dim, image_size, max_positions, mean, std."""
    return {"projection_dim": PROJ_DIM, "image_size": IMAGE_SIZE, "max_positions": MAX_POS, "mean": PP_MEAN,
            "std": PP_STD}


def bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable-character map, in byte order of the mapped characters."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer(src: Path, dst: Path) -> tuple[int, int, int]:
    """A byte-level BPE CLIP tokenizer: vocab.json + merges.txt in `src`, saved loadable into `dst`.

    Returns (vocab size, bos id, eos id)."""
    from transformers import CLIPTokenizer
    chars = bytes_to_unicode()
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>")]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    src.mkdir(parents=True, exist_ok=True)
    (src / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (src / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                                    encoding="utf-8")
    # from_pretrained on the two files works on transformers 4 (slow tokenizer) and 5 (tokenizers backend).
    tok = CLIPTokenizer.from_pretrained(str(src))
    tok.save_pretrained(str(dst))
    return len(vocab), vocab["<|startoftext|>"], vocab["<|endoftext|>"]


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory) -> Path:
    """A tiny random CLIP (hidden size 32, 2 layers, 32-px images) saved offline with its tokenizer, as a
    transformers model folder: what the hf: backend loads. Its sizes are TINY_CLIP's."""
    from transformers import CLIPConfig, CLIPModel  # lazily: only the CLIP tests need transformers
    root = tmp_path_factory.mktemp("tiny_clip")
    model_dir = root / "model"
    vocab_size, bos, eos = write_tiny_tokenizer(root / "tok_src", model_dir)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                  projection_dim=PROJ_DIM)
    config = CLIPConfig(
        text_config=dict(common, vocab_size=vocab_size, max_position_embeddings=MAX_POS,
                         bos_token_id=bos, eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(common, image_size=IMAGE_SIZE, patch_size=8),
        projection_dim=PROJ_DIM)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(str(model_dir))
    # Only image_mean/image_std are read by HFClipEncoder; non-CLIP values show that they are honoured.
    (model_dir / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "image_mean": PP_MEAN, "image_std": PP_STD}))
    return model_dir


@pytest.fixture(scope="module")
def hf_encoder(tiny_clip_dir):
    """The hf: encoder of the tiny CLIP."""
    return encoders.load("hf:" + str(tiny_clip_dir), "cpu")


# ----------------------------------------------------------------------------------------------- feature folders

def _write_folder(path: Path, seed: int = 0, n: int = 3000, dim: int = 64) -> torch.Tensor:
    """A feature folder as extraction writes it (files and manifest keys), of `n` seeded random unit rows;
    returns the float16 features."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(n, dim, generator=g), dim=1).half()
    path.mkdir(parents=True, exist_ok=True)
    save_tensors(path / "features.safetensors", {"features": x}, metadata={"format": "pt"})
    write_json(path / "names.json", [f"img{i:05d}" for i in range(n)])
    write_json(path / "manifest.json", {"encoder": "test", "dim": dim, "count": n, "dtype": "float16",
                                        "normalized": True, "skipped": [], "skipped_count": 0})
    return x


@pytest.fixture(scope="session")
def write_folder():
    """write_folder(path, seed=0, n=3000, dim=64): a feature folder of seeded random unit rows, as extraction
    writes it; returns its float16 features."""
    return _write_folder

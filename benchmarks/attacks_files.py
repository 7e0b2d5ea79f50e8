"""The damaged and oversized files bench_attacks.py serves, all written under a temporary folder (never into
the repository): large photos in an image folder and its extracted index, a PNG bomb swapped in after it,
damaged Combiner checkpoints, damaged feature folders (a names.json listing an id twice with its checksum
recomputed, a manifest that is a symlink loop), and the request bodies that need building (a multipart
upload, a 2-frame MPO).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from serving import REPO

log = logging.getLogger("bench_attacks")
BIG_JPEG = (5712, 4284)     # 24.5 MP: a recent iPhone Pro's default photo
BIG_PNG = (10000, 10000)    # 100 MP
BOMB = (15000, 15000)       # 225 MP: over twice PIL's MAX_IMAGE_PIXELS (89.5 MP)
SWAPPED = "swapped.png"     # a small image at extraction, replaced by a 225 MP one while serving


# ----------------------------------------------------------------------------------------------- large images

def _gradient(size: tuple[int, int], seed: int) -> Image.Image:
    """An RGB picture of `size` built from gradients at low resolution, scaled up, with a little noise on top
    (noise over every pixel of 100 MP would make the PNG write take minutes)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = np.zeros((256, 256, 3), np.uint8)
    x, y = np.meshgrid(np.arange(256), np.arange(256))
    small[..., 0], small[..., 1], small[..., 2] = x, y, (x + y) // 2
    small = np.clip(small.astype(int) + rng.integers(-40, 40, small.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(small).resize(size, Image.BILINEAR)


def write_big_images(folder: Path) -> dict[str, Path]:
    """A 5712x4284 JPEG (noise over a gradient: a realistic size on disk), a 10000x10000 PNG, and a small
    PNG (SWAPPED) that bomb_png replaces once it is indexed."""
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jpeg = _gradient(BIG_JPEG, 1)
    noise = Image.effect_noise(BIG_JPEG, 48).convert("RGB")
    Image.blend(jpeg, noise, 0.3).save(folder / "photo-24mp.jpg", "JPEG", quality=90)
    del jpeg, noise
    png = _gradient(BIG_PNG, 2)
    png.save(folder / "scan-100mp.png", "PNG", compress_level=1)
    del png
    Image.new("RGB", (640, 480), (200, 60, 60)).save(folder / SWAPPED, "PNG")   # swapped later (bomb_png)
    out = {"jpeg": folder / "photo-24mp.jpg", "png": folder / "scan-100mp.png"}
    log.info("wrote %s in %.1f s", {k: f"{p.stat().st_size / 1e6:.1f} MB" for k, p in out.items()},
             time.perf_counter() - t0)
    return out


def bomb_png(path: Path, size: tuple[int, int] = BOMB) -> None:
    """Overwrite `path` with a 1-bit PNG of `size`: a few hundred kB on disk, over twice PIL's
    MAX_IMAGE_PIXELS (so Image.open raises DecompressionBombError, which is not an OSError)."""
    tmp = path.with_suffix(".tmp")
    Image.new("1", size).save(tmp, "PNG")
    os.replace(tmp, path)


def extract_folder(images: Path, features_root: Path, log_path: Path) -> tuple[Path, float]:
    """Extract the image folder's index with the project's CLI (folder layout) into features_root; returns
    the index folder and the seconds it took. Raises RuntimeError with the CLI's last output lines."""
    cmd = [sys.executable, str(REPO / "extract_features.py"), "--dataset", "folder", "--data-root", str(images),
           "--out", str(features_root), "--device", "cpu", "--workers", "0"]
    log.info("extracting: %s", " ".join(cmd))
    t0 = time.perf_counter()
    with open(log_path, "w") as out:
        rc = subprocess.run(cmd, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out,
                            stderr=subprocess.STDOUT, timeout=1800).returncode
    folder = features_root / f"folder-{images.name}"
    if rc != 0 or not (folder / "manifest.json").is_file():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-8:])
        raise RuntimeError(f"extraction failed (exit {rc}):\n{tail}")
    return folder, time.perf_counter() - t0


def link_folders(src_root: Path, dst_root: Path) -> list[str]:
    """Symlink every index folder of src_root into dst_root (served beside the temporary ones)."""
    dst_root.mkdir(parents=True, exist_ok=True)
    names = []
    for folder in sorted(p for p in src_root.iterdir() if (p / "manifest.json").is_file()):
        (dst_root / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        names.append(folder.name)
    return names


# ----------------------------------------------------------------------------------------------- weights

def damaged_combiners(good: Path, folder: Path) -> dict[str, Path]:
    """Copies of a Combiner checkpoint: truncated to half, random bytes of the same size, and one whose
    first floating-point tensor is all NaN; each with the checkpoint's .json beside it (as shipped)."""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    data = good.read_bytes()
    out = {"truncated": folder / "truncated.safetensors", "garbage": folder / "garbage.safetensors",
           "nan": folder / "nan.safetensors"}
    out["truncated"].write_bytes(data[: len(data) // 2])
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, len(data), np.uint8).tobytes())
    tensors = load_file(str(good))
    name = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[name] = tensors[name].clone().fill_(float("nan"))
    save_file(tensors, str(out["nan"]))
    config = good.with_suffix(".json")
    for path in out.values():
        if config.is_file():
            shutil.copyfile(config, path.with_suffix(".json"))
    return out


# ----------------------------------------------------------------------------------------------- feature folders

def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".extract.lock"))
    return dst


def duplicate_id_folder(src: Path, dst: Path) -> str:
    """A copy whose names.json lists its first id twice (row 1 renamed), with the checksum in the manifest
    recomputed as cir.index.files verifies it (sha256 of the file): only the duplicate is wrong. Returns
    the duplicated id."""
    copy_folder(src, dst)
    names = json.loads((dst / "names.json").read_text())
    names[1] = names[0]
    (dst / "names.json").write_text(json.dumps(names, indent=1))
    manifest = json.loads((dst / "manifest.json").read_text())
    if isinstance(manifest.get("checksums"), dict):
        manifest["checksums"]["names.json"] = hashlib.sha256((dst / "names.json").read_bytes()).hexdigest()
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return names[0]


def symlink_loop_folder(src: Path, dst: Path) -> None:
    """A copy whose manifest.json is a symlink to itself (ELOOP on open)."""
    copy_folder(src, dst)
    (dst / "manifest.json").unlink()
    os.symlink("manifest.json", dst / "manifest.json")


def dangling_manifest_folder(src: Path, dst: Path) -> None:
    """A copy whose manifest.json is a symlink to a file that does not exist."""
    copy_folder(src, dst)
    (dst / "manifest.json").unlink()
    os.symlink("gone.json", dst / "manifest.json")


# ----------------------------------------------------------------------------------------------- bodies

def jpeg_bytes(size=(640, 480), colour=(30, 120, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "JPEG")
    return buf.getvalue()


def mpo_bytes() -> bytes | None:
    """A 2-frame MPO (a red first frame, a blue second one), or None when this PIL cannot write MPO."""
    buf = io.BytesIO()
    first, second = Image.new("RGB", (2000, 1500), (220, 20, 20)), Image.new("RGB", (2000, 1500), (20, 20, 220))
    try:
        first.save(buf, "MPO", save_all=True, append_images=[second])
    except (KeyError, ValueError, OSError):
        return None
    with Image.open(io.BytesIO(buf.getvalue())) as im:
        if im.format != "MPO" or getattr(im, "n_frames", 1) != 2:
            return None
    return buf.getvalue()


def multipart(field: str, filename: str, data: bytes, kind: str = "image/jpeg") -> tuple[bytes, str]:
    """A multipart/form-data body with one file field; returns (body, Content-Type)."""
    boundary = "cirattack" + os.urandom(8).hex()
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {kind}\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def first_pixel(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB").getpixel((10, 10))

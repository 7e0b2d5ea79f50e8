"""Write the catalogue's generated triplets into the real FashionIQ and CIRR dataset layouts.

    python layouts.py fashioniq --out layouts/fashionIQ_dataset
    python layouts.py cirr --out layouts/cirr_dataset --splits val

so the FashionIQ and CIRR code paths (cir.data loaders, extract_features.py, evaluate.py, train.py) run on
real images. Images are never copied: each is a symlink (a hard link where no symlink can be made) to
``<catalogue>/images/<id>.jpg``, named by its catalogue id with its true ``.jpg`` extension, which both
loaders accept. Only the catalogue's train and val splits are written; its test split is refused.

- FashionIQ: ``images/<id>.jpg``, ``captions/cap.<cat>.<split>.json`` (``{"candidate", "target",
  "captions": [c1, c2]}``), ``image_splits/split.<cat>.<split>.json`` (every catalogue image of the category
  in the split). Triplets are generated among one category's images, so reference and target share it.
  The two captions are two phrasings of the same edit: ``c1`` is ``triplets.generate``'s caption; ``c2``
  comes from running ``triplets.generate`` again on just the (reference, target) pair, keeping a triplet with
  the same condition (triplets.condition_key), with seeds derived from (seed, reference, target, try) until
  its wording differs.
- CIRR rc2: ``cirr/captions/cap.rc2.<split>.json``, ``cirr/image_splits/split.rc2.<split>.json`` mapping
  name -> ``./train/<n>/<id>.jpg`` (n = crc32(id) % 100) or ``./dev/<id>.jpg``. Each triplet has a unique
  pairid (``PAIRID_OFFSET[split] + i``), ``target_soft = {target: 1.0}`` and its own img_set (id = pairid)
  of 6 members as in the real files: the reference, the target and 4 images of the split drawn from the
  target's articleType, then the reference's, then the target's subCategory, then anything, never an image
  satisfying the triplet's condition (so the target is the one right answer in the set), shuffled.
  ``reference_rank`` / ``target_rank`` are their positions in ``members``.
"""
from __future__ import annotations

import logging
import os
import random
import zlib
from collections import Counter
from pathlib import Path
from typing import Sequence

from cir.catalog import triplets
from cir.data import ImageRecord, catalog_images, check_images, resolve_data_root
from cir.utils import write_json

log = logging.getLogger("layouts")


# FashionIQ category -> catalogue articleTypes. The catalogue has only 33 Dresses, so the long one-piece
# garments of the kurta family fill "dress" out (Kurtas 361, Kurtis 60, Tunics 18).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "dress": ("Dresses", "Kurtas", "Kurtis", "Tunics"),
    "shirt": ("Shirts",),
    "toptee": ("Tshirts", "Tops"),
}


SPLITS = ("train", "val")  # the catalogue splits that may be written; never "test"


DEFAULT_PER_KIND = 1000  # triplets.generate's default: at most this many triplets of each kind


CIRR_DIRS = {"train": "train", "val": "dev"}


CIRR_TRAIN_FOLDERS = 100  # the real train images sit in train/0 .. train/99


CIRR_SET_SIZE = 6


PAIRID_OFFSET = {"train": 0, "val": 1_000_000}  # pairids unique across splits, whatever splits are written


CAPTION_TRIES = 32


def _check_splits(splits: Sequence[str]) -> list[str]:
    if isinstance(splits, str):
        splits = [splits]
    for s in splits:
        if s in ("test", "test1"):
            raise ValueError(f"split {s!r} refused: the catalogue's test split is kept for final figures and "
                             f"is never written into a layout; choose from {', '.join(SPLITS)}")
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}; choose from {', '.join(SPLITS)}")
    return list(dict.fromkeys(splits))


def _records(catalog_root: str | os.PathLike | None, split: str) -> list[ImageRecord]:
    root = resolve_data_root("catalog", catalog_root)
    records = sorted(catalog_images(root, split), key=lambda r: r.name)
    check_images(records)
    return records


def _link(src: Path, dst: Path) -> None:
    """Make ``dst`` a symlink to ``src`` (a hard link if symlinks fail); never a copy."""
    src = Path(os.path.abspath(src))
    if dst.is_symlink() and os.readlink(dst) == str(src):
        return
    if dst.exists() and not dst.is_symlink():
        if os.path.samefile(dst, src):
            return  # the hard link of an earlier run
        raise ValueError(f"{dst} exists and is not a link to {src}; write the layout into a fresh folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    try:
        os.symlink(src, tmp)
    except OSError:
        try:
            os.link(src, tmp)
        except OSError as e:
            raise PermissionError(f"cannot link {dst} to {src} (no symlink, no hard link: {e}); "
                                  "images are never copied") from e
    os.replace(tmp, dst)


def _second_caption(t: triplets.CatalogTriplet, pair: list[ImageRecord], seed: int) -> str | None:
    """Another wording of ``t``'s edit: generate on just its two images, the only edit there being ``t``'s."""
    for attempt in range(CAPTION_TRIES):
        s = zlib.crc32(f"{seed}|{t.reference}|{t.target}|{attempt}".encode())
        for u in triplets.generate(pair, seed=s, per_kind=2, kinds=[t.kind]):
            # The same condition too: on two images a kind may still word another edit ("not black", "no stripes").
            if ((u.reference, u.target) == (t.reference, t.target) and u.caption != t.caption
                    and triplets.condition_key(u) == triplets.condition_key(t)):
                return u.caption
    return None


def _fashioniq_entries(items: list[ImageRecord], seed: int, per_kind: int) -> list[dict]:
    by_name = {r.name: r for r in items}
    entries = []
    for t in triplets.generate(items, seed=seed, per_kind=per_kind):
        second = _second_caption(t, [by_name[t.reference], by_name[t.target]], seed)
        if second is None:
            log.warning("dropped %s -> %s: no second wording of %r", t.reference, t.target, t.caption)
            continue
        entries.append({"candidate": t.reference, "target": t.target, "captions": [t.caption, second]})
    return entries


def write_fashioniq(catalog_root: str | os.PathLike | None, out_dir: str | os.PathLike,
                    splits: Sequence[str] = SPLITS, seed: int = 0, per_kind: int = DEFAULT_PER_KIND,
                    categories: Sequence[str] | None = None) -> dict:
    """Write the FashionIQ layout under ``out_dir``; returns image and triplet counts per split and category."""
    splits = _check_splits(splits)
    cats = list(CATEGORIES) if categories is None else [categories] if isinstance(categories, str) else list(categories)
    unknown = [c for c in cats if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown FashionIQ categories {unknown}; choose from {', '.join(CATEGORIES)}")
    out = Path(out_dir)
    summary: dict = {"dataset": "fashioniq", "root": str(out), "seed": seed, "per_kind": per_kind, "splits": {}}
    for split in splits:
        records = _records(catalog_root, split)
        per_cat = {}
        for cat in cats:
            items = [r for r in records if r.attrs.get("articleType") in CATEGORIES[cat]]
            entries = _fashioniq_entries(items, seed, per_kind)
            for r in items:
                _link(r.path, out / "images" / f"{r.name}.jpg")
            write_json(out / "captions" / f"cap.{cat}.{split}.json", entries)
            write_json(out / "image_splits" / f"split.{cat}.{split}.json", [r.name for r in items])
            per_cat[cat] = {"images": len(items), "triplets": len(entries)}
            log.info("fashioniq %s %s: %d images, %d triplets", split, cat, len(items), len(entries))
        summary["splits"][split] = per_cat
    return summary


def _cirr_path(split: str, name: str) -> str:
    if split == "train":
        return f"./train/{zlib.crc32(name.encode()) % CIRR_TRAIN_FOLDERS}/{name}.jpg"
    return f"./{CIRR_DIRS[split]}/{name}.jpg"


class _SetPools:
    """One split's image names grouped by articleType and subCategory, for drawing img_set distractors."""

    def __init__(self, records: Sequence[ImageRecord]):
        self.attrs = {r.name: r.attrs for r in records}
        self.groups: dict[tuple, list[str]] = {(None, None): list(self.attrs)}
        for n, a in self.attrs.items():
            for field in ("articleType", "subCategory"):
                self.groups.setdefault((field, a.get(field, "")), []).append(n)

    def img_set(self, t: triplets.CatalogTriplet, rng: random.Random) -> list[str]:
        """The reference, the target and same-category images not satisfying the condition, shuffled."""
        members = [t.reference, t.target]
        for field, of in (("articleType", t.target), ("articleType", t.reference), ("subCategory", t.target),
                          (None, None)):
            need = CIRR_SET_SIZE - len(members)
            if need <= 0:
                break
            pool = self.groups[(field, self.attrs[of].get(field, "")) if field else (None, None)]
            cands = [n for n in pool
                     if n not in members and not triplets.satisfies(self.attrs[n], t.wanted, t.unwanted)]
            members += rng.sample(cands, min(need, len(cands)))
        rng.shuffle(members)
        return members


def _cirr_entry(t: triplets.CatalogTriplet, pairid: int, pools: _SetPools, seed: int) -> dict:
    members = pools.img_set(t, random.Random(f"{seed}|{pairid}"))
    return {"pairid": pairid, "reference": t.reference, "target_hard": t.target, "target_soft": {t.target: 1.0},
            "caption": t.caption, "img_set": {"id": pairid, "members": members,
                                              "reference_rank": members.index(t.reference),
                                              "target_rank": members.index(t.target)}}


def write_cirr(catalog_root: str | os.PathLike | None, out_dir: str | os.PathLike,
               splits: Sequence[str] = SPLITS, seed: int = 0, per_kind: int = DEFAULT_PER_KIND) -> dict:
    """Write the CIRR rc2 layout under ``out_dir``; returns image and triplet counts per split."""
    splits = _check_splits(splits)
    out = Path(out_dir)
    summary: dict = {"dataset": "cirr", "root": str(out), "seed": seed, "per_kind": per_kind, "splits": {}}
    for split in splits:
        records = _records(catalog_root, split)
        pools = _SetPools(records)
        trips = triplets.generate(records, seed=seed, per_kind=per_kind)
        if len(trips) >= min(v for v in PAIRID_OFFSET.values() if v > 0):
            raise ValueError(f"{len(trips)} triplets would overlap the next split's pairids; lower --per-kind")
        entries = [_cirr_entry(t, PAIRID_OFFSET[split] + i, pools, seed) for i, t in enumerate(trips)]
        paths = {r.name: _cirr_path(split, r.name) for r in records}
        for r in records:
            _link(r.path, out / paths[r.name])
        write_json(out / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)
        write_json(out / "cirr" / "image_splits" / f"split.rc2.{split}.json", paths)
        kinds = dict(sorted(Counter(t.kind for t in trips).items()))
        summary["splits"][split] = {"images": len(records), "triplets": len(entries), "kinds": kinds}
        log.info("cirr %s: %d images, %d triplets", split, len(records), len(entries))
    return summary

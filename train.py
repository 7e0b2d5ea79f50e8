"""Training commands.

    python train.py align      train the lite encoder's projection heads (locked towers, contrastive loss)
                               on the catalogue's train split; picks the best epoch on val.

Frozen-tower features are computed once and cached (--cache-dir), so re-training the heads takes a
minute or two on a small CPU. The test split is never read here.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data_utils
from captions import training_captions
from utils import WEIGHTS_DIR, get_device, run_cli, save_tensors, setup_logging, write_json

log = logging.getLogger("train")


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_image_backbone(encoder, records: Sequence[data_utils.ImageRecord], cache_dir: Path, tag: str,
                          batch_size: int = 64, workers: int | None = None) -> dict:
    """Frozen lite-tower features {names, pooled, colour} of `records`, computed once and cached."""
    from safetensors.torch import load_file
    from extract_features import default_workers, iter_batches

    names = [r.name for r in records]
    f = cache_dir / f"{tag}-{_key(encoder.preprocess.describe(), names)}.safetensors"
    if f.exists():
        data = load_file(f)
        return {"names": json.loads(f.with_suffix(".json").read_text()), **data}
    pooled, colour, kept = [], [], []
    workers = default_workers() if workers is None else workers
    for idx, pixels, bad in tqdm(iter_batches([r.path for r in records], encoder.preprocess, batch_size, workers),
                                 total=(len(records) + batch_size - 1) // batch_size, desc=f"towers {tag}"):
        for i, err in bad:
            log.warning("skipped %s: %s", names[i], err)
        if pixels is not None:
            p, c = encoder.image_backbone(pixels)
            pooled.append(p)
            colour.append(c)
            kept += [names[i] for i in idx]
    data = {"pooled": torch.cat(pooled), "colour": torch.cat(colour)}
    save_tensors(f, data)
    write_json(f.with_suffix(".json"), kept)
    return {"names": kept, **data}


def cached_text_backbone(encoder, texts: Sequence[str], cache_dir: Path, tag: str) -> torch.Tensor:
    """Frozen MiniLM embeddings of `texts`, cached by content."""
    from safetensors.torch import load_file
    f = cache_dir / f"{tag}-{_key(list(texts))}.safetensors"
    if f.exists():
        return load_file(f)["text"]
    out = []
    for i in tqdm(range(0, len(texts), 512), desc=f"text {tag}"):
        out.append(encoder.text_backbone(list(texts[i:i + 512])))
    x = torch.cat(out)
    save_tensors(f, {"text": x})
    return x


def cmd_align(args) -> int:
    from encoders import LiteConfig, LiteEncoder, LiteHeads
    from evaluate import recall_at_k
    from index import search

    torch.manual_seed(args.seed)
    device = get_device(args.device)
    root = data_utils.resolve_data_root("catalog", args.data_root)
    cache = Path(args.cache_dir)
    cfg = LiteConfig(embed_dim=args.embed_dim, hidden_dim=args.hidden_dim, dropout=args.dropout)
    heads = LiteHeads(cfg)
    enc = LiteEncoder(heads, device)  # towers are frozen; only `heads` learns

    splits = {}
    for split in ("train", "val"):  # never test
        recs = data_utils.catalog_images(root, split)
        feats = cached_image_backbone(enc, recs, cache, f"catalog-{split}", args.batch_size, args.workers)
        by_name = {r.name: r for r in recs}
        splits[split] = (feats, [by_name[n].attrs for n in feats["names"]])

    # Training captions: the product name plus attribute phrasings, fixed by the seed.
    (tr, tr_attrs), (va, va_attrs) = splits["train"], splits["val"]
    rng = random.Random(args.seed)
    caps = [training_captions(a, rng, args.captions_per_image) for a in tr_attrs]
    vocab = sorted({c for cs in caps for c in cs})
    text_id = {t: i for i, t in enumerate(vocab)}
    cap_ids = torch.tensor([[text_id[c] for c in cs] for cs in caps])
    text_feats = cached_text_backbone(enc, vocab, cache, "captions")
    va_names = [a["productDisplayName"] for a in va_attrs]
    va_text = cached_text_backbone(enc, va_names, cache, "val-names")

    heads.to(device).train()
    opt = torch.optim.AdamW(heads.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    n = len(tr["names"])
    steps = args.epochs * ((n + args.batch - 1) // args.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.1)
    pooled, colour = tr["pooled"].to(device), tr["colour"].to(device)
    text_feats = text_feats.to(device)
    best, best_state, history = -1.0, None, []
    g = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        heads.train()
        perm = torch.randperm(n, generator=g)
        # Column 0 is the product name (what people paste into a search box); the rest are phrasings.
        pick = torch.where(torch.rand(n, generator=g) < args.name_prob, 0,
                           torch.randint(1, cap_ids.shape[1], (n,), generator=g))
        total = 0.0
        for b in range(0, n, args.batch):
            idx = perm[b:b + args.batch]
            tid = cap_ids[idx, pick[idx]]
            img = heads.image(pooled[idx], colour[idx])
            txt = heads.text(text_feats[tid.to(device)])
            logits = heads.logit_scale.exp().clamp(max=100) * img @ txt.T
            # Identical captions in a batch ("black t-shirt") are all correct: soft multi-positive targets.
            same = (tid[:, None] == tid[None, :]).float().to(device)
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        heads.eval()
        with torch.no_grad():
            gi = heads.image(va["pooled"].to(device), va["colour"].to(device)).cpu()
            qt = heads.text(va_text.to(device)).cpu()
        _, ranked = search(qt, gi, 10)
        metrics = recall_at_k(ranked, torch.arange(len(qt)), (1, 5, 10))
        score = (metrics["R@1"] + metrics["R@10"]) / 2
        history.append({"epoch": epoch + 1, "loss": round(total / n, 4), **metrics})
        log.info("epoch %d loss %.4f val %s", epoch + 1, total / n, metrics)
        if score > best:
            best, best_state = score, {k: v.detach().cpu().clone() for k, v in heads.state_dict().items()}
    heads.load_state_dict(best_state)
    heads.cpu().eval()
    out = Path(args.out)
    heads.save(out)
    best_epoch = max(history, key=lambda h: (h["R@1"] + h["R@10"]) / 2)
    write_json(out.with_name(out.stem + ".train.json"),
               {"args": vars(args), "config": asdict(cfg), "best": best_epoch, "history": history})
    print(json.dumps({"saved": str(out), "best_val": best_epoch}))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("align", help="train the lite encoder's projection heads on the catalogue")
    a.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    a.add_argument("--out", default=str(WEIGHTS_DIR / "lite.safetensors"),
                   help="where the heads go (a .json config is written beside them)")
    a.add_argument("--cache-dir", default=".cache/train", help="cache for frozen-tower features")
    a.add_argument("--epochs", type=int, default=40, help="passes over the train images")
    a.add_argument("--batch", type=int, default=512, help="contrastive batch size (more in-batch negatives)")
    a.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (one-cycle schedule)")
    a.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay")
    a.add_argument("--embed-dim", type=int, default=256, help="shared space size")
    a.add_argument("--hidden-dim", type=int, default=1024, help="hidden width of the heads")
    a.add_argument("--dropout", type=float, default=0.3, help="dropout in the heads")
    a.add_argument("--captions-per-image", type=int, default=8,
                   help="captions per image (product name + attribute phrasings), one drawn per epoch")
    a.add_argument("--name-prob", type=float, default=0.5,
                   help="probability that an image's caption in an epoch is its product name, not a phrasing")
    a.add_argument("--batch-size", type=int, default=64, help="images per tower batch when caching features")
    a.add_argument("--workers", type=int, default=None, help="decoding workers (default: min(4, cores))")
    a.add_argument("--device", default="auto", help="auto, cpu or cuda")
    a.add_argument("--seed", type=int, default=0, help="seed for captions, shuffling and init")
    a.add_argument("--verbose", action="store_true", help="debug logging")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    return {"align": cmd_align}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))

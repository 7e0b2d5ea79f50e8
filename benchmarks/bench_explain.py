"""How well the explanations localise, and what they cost: on catalogue test images, the share of the map's
heat on the product (its non-white pixels, cir.encoders.colour.foreground) against a uniform map's share (the product's
area), for text queries of the product's own colour and type ("a navy blue shirt"); and ms per explanation
on this machine (torch and ONNX Runtime limited to --threads). Optionally a picture of a few explanations.

    python3 benchmarks/bench_explain.py --n 200 --picture docs/explain.png
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from cir import encoders  # noqa: E402
from cir.data import catalog_images, known, resolve_data_root  # noqa: E402
from cir.encoders.colour import foreground  # noqa: E402
from cir.explain import Explainer, query_vector, to_image_frame  # noqa: E402
from cir.images import open_image  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench_explain")


def product_mask(im: Image.Image) -> np.ndarray:
    rgb = torch.from_numpy(np.asarray(im, np.float32) / 255).permute(2, 0, 1)[None]
    return foreground(rgb)[0][0].numpy() > 0.5


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200, help="catalogue test images to explain")
    p.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads")
    p.add_argument("--picture", help="write a strip of a few explanations here (PNG)")
    p.add_argument("--data-root", help="the catalogue folder (default: the shared data folder)")
    args = p.parse_args()
    setup_logging()
    torch.set_num_threads(args.threads)
    enc = encoders.load("lite", "cpu")
    ex = Explainer(enc)
    records = [r for r in catalog_images(resolve_data_root("catalog", args.data_root), "test")
               if known(r.attrs.get("baseColour")) and r.attrs.get("articleType")][:args.n]
    shares, uniform, cnn_shares, times, strip = [], [], [], [], []
    for r in records:
        im = open_image(r.path)
        text = f"a {r.attrs['baseColour'].lower()} {r.attrs['articleType'].lower()}"
        q = query_vector(enc, text)
        t0 = time.perf_counter()
        e = ex.explain(im, q)
        times.append((time.perf_counter() - t0) * 1000)
        mask = product_mask(im)
        if not 0.02 < mask.mean() < 0.98:
            continue  # no studio background found: no product mask to score against
        shares.append(float(e.heat[mask].sum() / max(e.heat.sum(), 1e-9)))
        cnn = to_image_frame(torch.from_numpy(e.cnn), enc.preprocess, im.width, im.height)
        cnn_shares.append(float(cnn[mask].sum() / max(cnn.sum(), 1e-9)))
        uniform.append(float(mask.mean()))
        if len(strip) < 6:
            strip.append(e.overlay())
    times = times[3:] or times  # the first calls pay lazy allocations
    print(f"images {len(shares)} (of {len(records)}), threads {args.threads}")
    print(f"heat on product: {statistics.mean(shares):.3f} (Grad-CAM of the conv map alone "
          f"{statistics.mean(cnn_shares):.3f}); uniform map {statistics.mean(uniform):.3f}; "
          f"images where the map beats uniform {np.mean(np.array(shares) > np.array(uniform)):.0%}")
    print(f"ms per explanation: median {statistics.median(times):.1f}, p90 {np.percentile(times, 90):.1f}")
    if args.picture and strip:
        h = max(s.height for s in strip)
        out = Image.new("RGB", (sum(s.width for s in strip), h), "white")
        x = 0
        for s in strip:
            out.paste(s, (x, 0))
            x += s.width
        out.save(args.picture)
        log.info("wrote %s", args.picture)


if __name__ == "__main__":
    main()

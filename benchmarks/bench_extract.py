"""Extraction throughput: images/s, JPEG decode included, for the local and the Ray engine (and a GPU model).

    python3 benchmarks/bench_extract.py                          # both engines, whole catalogue (9,583 JPEGs)
    python3 benchmarks/bench_extract.py --limit 1500 --engines ray
    python3 benchmarks/bench_extract.py --gpu-model vit-b32      # CUDA only: a CLIP ViT-B/32-sized image tower

Engines: the shipped lite encoder on `--device` (default cpu), from scratch into a temporary features folder
(nothing cached), through extract_features.extract_index (local) and ray_extract.extract_index_ray (ray, a
local Ray with this machine's cores, started before the clock; the actors' encoder loading is inside it,
as a user of one run sees it). The encoder load on the driver is reported, not counted.

--gpu-model vit-b32: a randomly initialised CLIPVisionModelWithProjection of ViT-B/32's size (12 layers,
768 wide, patch 32, 224 px, projection 512) in float16 autocast on CUDA, fed by a DataLoader with many
decoding workers (extract_job.iter_batches, pinned memory); it times decode + preprocess + encode over
the catalogue (`--repeat` passes, after one warm-up batch). Without a GPU it says so and measures nothing.

Prints a markdown table (with the command, load average and cores: other jobs may share the machine),
then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import platform  # noqa: E402

import torch  # noqa: E402

from cir import encoders  # noqa: E402
from cir.data import catalog_images, resolve_data_root  # noqa: E402
from cir.extraction.job import iter_batches  # noqa: E402
from cir.extraction.local import extract_index  # noqa: E402
from cir.extraction.ray_engine import EncoderSpec, extract_index_ray, plan_actors, ray_session  # noqa: E402
from cir.utils import setup_logging  # noqa: E402

log = logging.getLogger("bench.extract")


def bench_engines(args, recs: list) -> list[dict]:
    """One extraction per engine into a fresh temporary folder; img/s over the job's wall time."""
    rows = []
    for engine in args.engines:
        t = time.perf_counter()
        if engine == "local":
            enc = encoders.load("lite", args.device)
            load_s = time.perf_counter() - t
            with tempfile.TemporaryDirectory() as tmp:
                res = extract_index(recs, enc, Path(tmp) / "idx", batch_size=args.batch_size, workers=args.workers,
                                    shard_size=args.shard_size)
            extra = {"workers": args.workers}
        else:
            spec = EncoderSpec("lite")
            enc = spec.load("cpu")
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            with ray_session(args.ray_address) as ray, tempfile.TemporaryDirectory() as tmp:
                init_s = time.perf_counter() - t
                res = extract_index_ray(recs, enc, spec, Path(tmp) / "idx", batch_size=args.batch_size,
                                                    shard_size=args.shard_size, device=args.device,
                                                    workers=args.ray_workers, decode_cpus=args.decode_cpus)
                plan = plan_actors(ray, args.device, args.ray_workers, args.decode_cpus)
            extra = {"ray_init_s": round(init_s, 1), "actors": plan.actors, "actor_cpus": plan.cpus,
                     "decode_cpus": args.decode_cpus}
        rows.append({"engine": engine, "images": len(recs), "count": res.count, "skipped": len(res.skipped),
                     "seconds": round(res.seconds, 1), "img_per_s": round(len(recs) / res.seconds, 1),
                     "driver_encoder_load_s": round(load_s, 1), **extra})
        log.info("%s", rows[-1])
    return rows


def vit_b32(device: torch.device):
    """A CLIP ViT-B/32-sized image tower with random weights (same compute as the real one)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    cfg = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                           image_size=224, patch_size=32, projection_dim=512)
    return CLIPVisionModelWithProjection(cfg).to(device).eval()


def bench_gpu(args, recs: list) -> dict:
    """Decode + preprocess + encode images/s of a ViT-B/32-sized model on CUDA (fp16 autocast)."""
    if not torch.cuda.is_available():
        log.warning("no GPU is present (torch.cuda.is_available() is False): the --gpu-model benchmark is "
                    "skipped, nothing was measured")
        return {"gpu_model": args.gpu_model, "measured": False, "reason": "no CUDA device"}
    from cir.encoders.preprocess import CLIP_MEAN, CLIP_STD, Preprocess
    dev = torch.device("cuda")
    model = vit_b32(dev)
    pre = Preprocess("targetpad", 224, CLIP_MEAN, CLIP_STD)
    paths = [r.path for r in recs] * args.repeat
    workers = args.gpu_workers or min(32, os.cpu_count() or 1)

    @torch.inference_mode()
    def encode(pixels: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.float16):
            out = model(pixel_values=pixels.to(dev, non_blocking=True)).image_embeds
        return torch.nn.functional.normalize(out.float(), dim=-1).half()

    encode(torch.zeros(args.gpu_batch_size, 3, 224, 224))  # warm-up: CUDA context, kernels, allocator
    torch.cuda.synchronize()
    n, n_first, t_first, t0 = 0, 0, None, time.perf_counter()
    outs = []
    for idx, pixels, bad in iter_batches(paths, pre, args.gpu_batch_size, workers, pin_memory=True):
        if pixels is not None:
            outs.append(encode(pixels))
            n += len(idx)
        if t_first is None:  # the decoding workers are up: steady state from here
            torch.cuda.synchronize()
            t_first, n_first = time.perf_counter(), n
    torch.cuda.synchronize()
    t_end = time.perf_counter()
    steady = (n - n_first) / (t_end - t_first) if t_end > t_first else float("nan")
    return {"gpu_model": args.gpu_model, "measured": True, "gpu": torch.cuda.get_device_name(0), "images": n,
            "seconds": round(t_end - t0, 2), "img_per_s": round(n / (t_end - t0), 1),
            "img_per_s_steady": round(steady, 1), "batch_size": args.gpu_batch_size, "workers": workers,
            "repeat": args.repeat, "dtype": "float16 autocast", "target_img_per_s": 3000}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=None, help="catalogue folder (default: $CIR_DATA_ROOT or ../shared/data)")
    p.add_argument("--split", default="all", help="catalogue split to extract")
    p.add_argument("--limit", type=int, default=None, help="only the first N images (quick runs)")
    p.add_argument("--engines", nargs="+", choices=["local", "ray"], default=["local", "ray"])
    p.add_argument("--device", default="cpu", help="encoder device for the engines: cpu, auto, cuda")
    p.add_argument("--batch-size", type=int, default=64, help="images per encoder batch")
    p.add_argument("--shard-size", type=int, default=2048, help="images per resumable shard")
    p.add_argument("--workers", type=int, default=None, help="local engine: decoding workers (default min(4, cores))")
    p.add_argument("--ray-address", default=None, help="ray engine: cluster address (default: a local Ray)")
    p.add_argument("--ray-workers", type=int, default=None, help="ray engine: encoder actors (default as the CLI)")
    p.add_argument("--decode-cpus", type=float, default=0.5, help="ray engine: CPUs a decode task reserves")
    p.add_argument("--gpu-model", choices=["vit-b32"], default=None,
                   help="instead of the engines: a ViT-B/32-sized model on CUDA (skipped without a GPU)")
    p.add_argument("--gpu-batch-size", type=int, default=256, help="GPU mode: images per batch")
    p.add_argument("--gpu-workers", type=int, default=None, help="GPU mode: decoding workers (default min(32, cores))")
    p.add_argument("--repeat", type=int, default=3, help="GPU mode: passes over the images (a longer measurement)")
    args = p.parse_args(argv)
    setup_logging()
    root = resolve_data_root("catalog", args.data_root)
    recs = catalog_images(root, args.split)[: args.limit]
    load1 = os.getloadavg()[0]
    env = {"command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "cpu_count": os.cpu_count(),
           "machine": platform.machine(), "loadavg_1m_before": round(load1, 2), "limit": args.limit,
           "date": time.strftime("%Y-%m-%d")}
    if args.gpu_model:
        res = bench_gpu(args, recs)
        env["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        print(f"`python3 {env['command']}`: {env['cpu_count']} cores, load average {env['loadavg_1m_before']} "
              f"before / {env['loadavg_1m_after']} after\n")
        print("| model | device | images | decode workers | img/s (all) | img/s (after first batch) | target |\n"
              "|---|---|---:|---:|---:|---:|---:|")
        if res["measured"]:
            print(f"| CLIP ViT-B/32-sized (random weights), fp16 autocast, decode included | {res['gpu']} | "
                  f"{res['images']} | {res['workers']} | {res['img_per_s']} | {res['img_per_s_steady']} | >= 3000 |")
        else:
            print("| CLIP ViT-B/32-sized (random weights) | no GPU present | - | - | not measured | - | >= 3000 |")
        print(json.dumps({**env, **res}))
        return 0
    rows = bench_engines(args, recs)
    env["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
    print(f"\n`python3 {env['command']}`: {env['cpu_count']} cores ({env['machine']}), load average "
          f"{env['loadavg_1m_before']} before / {env['loadavg_1m_after']} after, {env['date']}\n")
    print("| engine | images (skipped) | encoder workers | seconds | img/s |\n|---|---:|---|---:|---:|")
    for r in rows:
        who = (f"{r['actors']} encoder actor(s) ({r['actor_cpus']:g} CPU each), decode tasks ({r['decode_cpus']:g} "
               f"CPU each); Ray start-up {r['ray_init_s']} s not counted" if r["engine"] == "ray"
               else f"1 process, {r['workers'] or 'min(4, cores)'} decode workers")
        print(f"| {r['engine']} | {r['images']} ({r['skipped']}) | {who} | {r['seconds']} | {r['img_per_s']} |")
    print(json.dumps({**env, "device": args.device, "batch_size": args.batch_size, "engines": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

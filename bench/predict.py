"""Cost of `htl-ray predict`, measured as ratios within one run (this machine is noisy).

1. Throughput: images/s of `htl-ray predict` (Ray Data actor pool, one actor with every CPU)
   ÷ a plain in-process loop doing the same work with the same threads — decode, resize to the
   training size, the forward pass and the default risk's passes (TTA: three more), resize back,
   write the PNG — over the same images. Target ≥ 0.9. Both include model construction; the
   predict side also starts its actor (the local Ray cluster is up before the clock starts).
2. Memory: peak resident memory of the driver (`htl-ray predict` itself) and of the predictor
   actor at 200 and at 2,000 images. Target: flat (ratio ≈ 1), since masks are written by the
   actors and only per-image scalars reach the driver.

Images: the real ISIC 2018 images of ../shared/data/isic2018-task1-256 (256×256 JPEG) when
present, else synthetic ones; the model: a randomly initialised U-Net/ResNet-18 at 128×128
(throughput does not depend on the weights).

Usage: .venv/bin/python bench/predict.py [--small 200] [--large 2000] [--size 128] [--cpus N]
       [--batch-size 8]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import PeakRss, isic_dir, workdir

from htl_ray.checkpoints import save_checkpoint
from htl_ray.config import ModelConfig
from htl_ray.inference import MASK_SUFFIX, load_rgb, probability_at, to_input_size, to_tensor
from htl_ray.models import create_model
from htl_ray.predict.actor import write_png
from htl_ray.quality import DEFAULT_RISK, RISKS, quality_signals

DRIVER = """
import json, resource, sys, time
from htl_ray.cluster import init_ray
from htl_ray.predict import predict
init_ray()
t0 = time.perf_counter()
out = predict(sys.argv[1], sys.argv[2], sys.argv[3], cpus_per_actor=float(sys.argv[4]) or None,
              batch_size=int(sys.argv[5]))
print(json.dumps({"seconds": time.perf_counter() - t0, "images": len(out.table),
                  "driver_peak_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def images(root: Path, n: int) -> Path:
    """A folder of n images (real ISIC ones when available, cycled if n exceeds them)."""
    folder = root / f"images-{n}"
    if folder.is_dir() and len(list(folder.iterdir())) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    src = isic_dir()
    real = sorted((src / "ISIC2018_Task1-2_Training_Input").glob("*.jpg")) if src else []
    rng = np.random.default_rng(0)
    for i in range(n):
        dest = folder / f"img_{i:05d}.jpg"
        if dest.exists():
            continue
        if real:
            dest.symlink_to(real[i % len(real)])
        else:
            from PIL import Image

            Image.fromarray(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)).save(dest)
    return folder


def checkpoint(root: Path, size: int) -> Path:
    model_cfg = ModelConfig()
    model = create_model(model_cfg)
    d = root / "model" / "checkpoint_000"
    save_checkpoint(d, model, torch.optim.SGD(model.parameters(), lr=0.1), None, epoch=0,
                    metrics={}, extra={"model_config": model_cfg.__dict__,
                                       "input_size": [size, size]})
    return d


def run_predict(ckpt: Path, folder: Path, out: Path, cpus: int, batch: int) -> dict:
    """`predict` in its own process (its own peak memory), with the actor's peak sampled."""
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    with PeakRss("PredictorActor") as actor:
        proc = subprocess.run([sys.executable, "-c", DRIVER, str(ckpt), str(folder), str(out),
                               str(cpus), str(batch)], capture_output=True, text=True,
                              check=False)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["actor_peak_kb"] = actor.peak // 1024
    return result


def in_process(ckpt: Path, folder: Path, out: Path, size: int, batch: int, threads: int
               ) -> float:
    """The same work in a plain loop, same threads: seconds for every image of `folder`."""
    from htl_ray.train.model_bundle import bundle_from_checkpoint

    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(threads)
    files = sorted(folder.iterdir())
    t0 = time.perf_counter()
    model = bundle_from_checkpoint(ckpt).build()
    tta = RISKS[DEFAULT_RISK].needs_tta
    with torch.inference_mode():
        for start in range(0, len(files), batch):
            chunk = [load_rgb(f) for f in files[start:start + batch]]
            x = to_tensor(np.stack([to_input_size(im, (size, size)) for im in chunk]))
            logits = model(x)
            quality_signals(model, x, logits, tta=tta)
            probs = torch.sigmoid(logits)[:, 0].numpy()
            for f, im, p in zip(files[start:start + batch], chunk, probs, strict=True):
                mask = probability_at(p, *im.shape[:2]) > 0.5
                write_png(mask.astype(np.uint8) * 255, out / f"{f.stem}{MASK_SUFFIX}")
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=200)
    ap.add_argument("--large", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=0, help="CPUs of the one actor and threads of "
                    "the loop (default: every CPU)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    cpus = args.cpus or os.cpu_count() or 1
    root = workdir("predict")
    ckpt = checkpoint(root, args.size)
    small, large = images(root, args.small), images(root, args.large)
    print(f"{os.cpu_count()} CPUs, {cpus} per side, batch {args.batch_size}; risk "
          f"{DEFAULT_RISK}; model U-Net/ResNet-18 at "
          f"{args.size}x{args.size}; images {'ISIC 256x256 JPEG' if isic_dir() else 'synthetic'}")
    at_small = run_predict(ckpt, small, root / "out-small", cpus, args.batch_size)
    at_large = run_predict(ckpt, large, root / "out-large", cpus, args.batch_size)
    loop_s = in_process(ckpt, large, root / "out-loop", args.size, args.batch_size, cpus)
    rate_predict = at_large["images"] / at_large["seconds"]
    rate_loop = args.large / loop_s
    for n, r in ((args.small, at_small), (args.large, at_large)):
        print(f"predict {n:>5} images: {r['seconds']:7.1f} s ({r['images'] / r['seconds']:.1f}"
              f" img/s); peak memory driver {r['driver_peak_kb'] / 1024:.0f} MiB, actor "
              f"{r['actor_peak_kb'] / 1024:.0f} MiB")
    print(f"in-process loop {args.large} images: {loop_s:.1f} s ({rate_loop:.1f} img/s)")
    print(f"ratio throughput predict / in-process loop: {rate_predict / rate_loop:.2f} "
          "(target >= 0.9)")
    print(f"ratio driver peak memory {args.large} / {args.small} images: "
          f"{at_large['driver_peak_kb'] / at_small['driver_peak_kb']:.2f} (target ~1: flat)")
    print(f"ratio actor peak memory {args.large} / {args.small} images: "
          f"{at_large['actor_peak_kb'] / max(at_small['actor_peak_kb'], 1):.2f} (target ~1: flat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Images/s of training and HTL scoring on one device (a GPU, or the CPU), with the package's
own step and scoring code and no Ray: what one trainer worker and one scorer actor do per batch.

Per configuration (image size, encoder, batch sizes of `htl_ray.train.loop` and the scorer):

- train step: one step of the training loop (augment → place on the device → autocast
  forward → per-sample loss → backward → optimiser step), as `htl_ray.train.loop` runs it,
  with the batch augmented on the device (the loop since 2026-12-04) and on the host (before);
- train compute: the same step on a batch already on the device, not augmented (the ceiling);
- host data path: decode + augment on one CPU thread (what feeds the step), images/s per core;
- scoring: `score_population_batch` with the dense model and K pruned copies (the scorer
  actor's `__call__` minus the Ray batch), decoding the batch on the device (as the actor
  does) and on the host (as it did until 2026-12-04); and, on a batch already decoded on the
  device, the scoring pass and a plain forward pass of the dense model;
- each under the `auto` placement (bf16 autocast + channels-last on a GPU) and plain fp32.

The last lines print the ratios: auto ÷ fp32 placement; one scoring pass ÷ (K+1) plain
forward passes (no redundant work: ≤ 1.1); scorer decoding on the device ÷ on the host;
device-augment step ÷ host-augment step; and the CPU cores one device needs to feed its
training steps (step images/s ÷ host images/s/core).

Usage: .venv/bin/python bench/gpu_throughput.py [--device cuda] [--seconds 3]
       [--configs 128:resnet18:16:32 256:resnet34:32:64]   (size:encoder:train batch:score batch)
       [--cudnn-benchmark] [--json figures.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from htl_ray.config import ExperimentConfig, load_config
from htl_ray.data.augment import augment_batch
from htl_ray.data.loading import decode_batch
from htl_ray.device import Placement, placement
from htl_ray.htl.scorer import ScoringSpec, build_scoring_models
from htl_ray.htl.scoring import score_population_batch
from htl_ray.losses import weighted_mean
from htl_ray.models import create_model
from htl_ray.supervision import SETTINGS
from htl_ray.train.optimization import make_optimizer

SPARSITIES = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class BenchConfig:
    size: int
    encoder: str
    train_batch: int
    score_batch: int

    @classmethod
    def parse(cls, text: str) -> BenchConfig:
        size, encoder, train_batch, score_batch = text.split(":")
        return cls(int(size), encoder, int(train_batch), int(score_batch))


def raw_batch(n: int, size: int, seed: int) -> dict[str, np.ndarray]:
    """A batch in the ingested layout (raw uint8 buffers), with a disc-shaped lesion each."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:size, :size]
    masks = np.stack([((yy - c[0]) ** 2 + (xx - c[1]) ** 2 < (size // 5) ** 2)
                      for c in rng.integers(size // 4, 3 * size // 4, (n, 2))]).astype(np.uint8)
    return {"id": np.arange(n), "image": np.array([i.tobytes() for i in images], dtype=object),
            "mask": np.array([m.tobytes() for m in masks], dtype=object),
            "height": np.full(n, size), "width": np.full(n, size)}


def rate(step: Callable[[], int], device: torch.device, seconds: float,
         warmup: int = 5) -> float:
    """Images per second of `step` (which returns the images it processed), after warm-up."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    images, t0 = 0, time.perf_counter()
    while True:
        images += step()
        if time.perf_counter() - t0 >= seconds:
            sync()
            break
    return images / (time.perf_counter() - t0)


def experiment(bc: BenchConfig) -> ExperimentConfig:
    return load_config(None, [f"model.encoder={bc.encoder}", "model.decoder_channels=null",
                              f"data.batch_size={bc.train_batch}"])


def train_rates(bc: BenchConfig, place: Placement, seconds: float) -> dict[str, float]:
    cfg = experiment(bc)
    torch.manual_seed(0)
    model = place.prepare(create_model(cfg.model))
    optimizer = make_optimizer(cfg.train, model.parameters())
    objective = SETTINGS[cfg.supervision.setting](cfg)
    objective.attach(model)
    model.train()
    raw = raw_batch(bc.train_batch, bc.size, seed=1)
    gen = torch.Generator().manual_seed(0)
    idx = np.arange(bc.train_batch)
    losses: list[torch.Tensor] = []

    def step_on(x: torch.Tensor, y: torch.Tensor) -> int:
        with place.autocast():
            per_sample = objective.per_sample_loss(model, x, y, raw, idx, 0, gen)
        loss = weighted_mean(per_sample, None)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        objective.after_step(model)
        losses.append(loss.detach())
        return len(x)

    def host_augment() -> int:               # the loop before 2026-12-04: augment, then place
        x, y = decode_batch(raw)
        x, y = augment_batch(x, y, cfg.data.augment, gen)
        return step_on(place.inputs(x), y.to(place.device, non_blocking=True))

    def device_augment() -> int:             # the loop now: place the batch, augment there
        x, y = decode_batch(raw)
        x, y = augment_batch(x.to(place.device, non_blocking=True),
                             y.to(place.device, non_blocking=True), cfg.data.augment, gen)
        return step_on(place.inputs(x), y)

    x_dev, y_dev = (t.to(place.device) for t in decode_batch(raw))
    x_dev = place.inputs(x_dev)
    out = {"train_step_host_augment": rate(host_augment, place.device, seconds),
           "train_step_device_augment": rate(device_augment, place.device, seconds)}
    losses.clear()
    out["train_compute"] = rate(lambda: step_on(x_dev, y_dev), place.device, seconds)
    # the same batch over and over: its loss must fall, or this placement does not train
    out["repeated_batch_loss_first"] = float(losses[0])
    out["repeated_batch_loss_last"] = float(losses[-1])
    if place.device.type == "cuda":
        out["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def host_rate(bc: BenchConfig, seconds: float, augment: bool = True) -> float:
    """Decode (+ augment) on one CPU thread: the host work behind each training image."""
    cfg = experiment(bc)
    raw = raw_batch(bc.train_batch, bc.size, seed=2)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if augment:
            return rate(lambda: len(augment_batch(*decode_batch(raw), cfg.data.augment,
                                                  gen)[0]), torch.device("cpu"), seconds)
        return rate(lambda: len(decode_batch(raw)[0]), torch.device("cpu"), seconds)
    finally:
        torch.set_num_threads(threads)


def score_rates(bc: BenchConfig, place: Placement, seconds: float) -> dict[str, float]:
    cfg = experiment(bc)
    torch.manual_seed(0)
    state = create_model(cfg.model).state_dict()
    spec = ScoringSpec(model=dataclasses.asdict(cfg.model), sparsities=SPARSITIES)
    dense, pruned = build_scoring_models(spec, state)
    population = [(place.prepare(dense), {s: place.prepare(m) for s, m in pruned.items()})]
    raw = raw_batch(bc.score_batch, bc.size, seed=3)

    def scoring(on_device: bool) -> int:     # ScorerActor.__call__ without the Ray batch
        images, masks = decode_batch(raw, place.device if on_device else None)
        with place.autocast():
            score_population_batch(population, place.inputs(images),
                                   masks.to(place.device), "mask")
        return len(images)

    x_dev, y_dev = decode_batch(raw, place.device)
    x_dev = place.inputs(x_dev)

    def score_compute() -> int:              # the same, on a batch already decoded there
        with place.autocast():
            score_population_batch(population, x_dev, y_dev, "mask")
        return len(x_dev)

    def forward_compute() -> int:            # one plain forward pass of the dense model
        with torch.inference_mode(), place.autocast():
            out = population[0][0](x_dev)
        out.sum().item()                     # the scorer also brings its result back
        return len(x_dev)

    return {"score": rate(lambda: scoring(True), place.device, seconds),
            "score_host_decode": rate(lambda: scoring(False), place.device, seconds),
            "score_compute": rate(score_compute, place.device, seconds),
            "forward_compute": rate(forward_compute, place.device, seconds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    p.add_argument("--configs", nargs="+", default=["128:resnet18:16:32", "256:resnet34:32:64"],
                   help="size:encoder:train batch:scorer batch (the CPU protocol's and the "
                        "GPU-scale variant's)")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="let cuDNN time its convolution algorithms (the package leaves it off)")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__}; {torch.get_num_threads()} CPU threads; "
          f"cudnn.benchmark {args.cudnn_benchmark}", flush=True)
    results: list[dict] = []
    for text in args.configs:
        bc = BenchConfig.parse(text)
        row: dict = {"config": text, "host_images_per_core": host_rate(bc, args.seconds),
                     "decode_images_per_core": host_rate(bc, args.seconds, augment=False)}
        for mode, prec, fmt in (("auto", "auto", "auto"), ("fp32", "fp32", "contiguous")):
            place = placement(device, prec, fmt)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            figures = {**train_rates(bc, place, args.seconds),
                       **score_rates(bc, place, args.seconds)}
            row[mode] = {"placement": place.describe(), **figures}
            print(f"{text} {place.describe()}: " + ", ".join(
                f"{k} {v:,.1f}" for k, v in figures.items()), flush=True)
        results.append(row)
    print()
    print(f"{'config':22} {'placement':8} {'step img/s':>11} {'compute':>9} {'score':>9} "
          f"{'fwd only':>9}")
    for row in results:
        for mode in ("auto", "fp32"):
            f = row[mode]
            print(f"{row['config']:22} {mode:8} {f['train_step_device_augment']:>11,.0f} "
                  f"{f['train_compute']:>9,.0f} {f['score']:>9,.0f} {f['forward_compute']:>9,.0f}")
    print()
    for row in results:
        a, f, c = row["auto"], row["fp32"], row["config"]
        host, dev = "train_step_host_augment", "train_step_device_augment"
        k1 = len(SPARSITIES) + 1
        print(f"{c}: auto/fp32 placement: train step {a[host] / f[host]:.2f}, "
              f"compute {a['train_compute'] / f['train_compute']:.2f}, "
              f"scoring {a['score'] / f['score']:.2f}")
        print(f"{c}: scoring pass / {k1} plain forward passes, decoded batch on the device "
              f"(time ratio, target <= 1.1): "
              f"{(1 / a['score_compute']) / (k1 / a['forward_compute']):.2f}")
        print(f"{c}: scorer decoding on the device / on the host (images/s): "
              f"{a['score'] / a['score_host_decode']:.2f}")
        for mode in ("auto", "fp32"):
            first, last = (row[mode][f"repeated_batch_loss_{k}"] for k in ("first", "last"))
            print(f"{c}: {mode}: loss on one repeated batch {first:.3f} -> {last:.3f}")
        print(f"{c}: device-augment step / host-augment step: {a[dev] / a[host]:.2f}")
        per_core, decode = row["host_images_per_core"], row["decode_images_per_core"]
        print(f"{c}: host decode + augment {per_core:,.0f} images/s per core, decode only "
              f"{decode:,.0f}; CPU cores to feed one device: {a[host] / per_core:.1f} "
              f"(host augment), {a[dev] / decode:.1f} (device augment)")
    print(f"train step img/s median over configs (auto): "
          f"{statistics.median(r['auto']['train_step_device_augment'] for r in results):,.0f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": name, "torch": torch.__version__, "results": results}, fh,
                      indent=1)


if __name__ == "__main__":
    main()

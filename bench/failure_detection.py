"""Which label-free risk predicts a failed segmentation (IoU < 0.65)? Generates
docs/quality_control.md.

Data (real ISIC 2018, ../shared/data/isic2018-task1-256, at 128x128):
- *ISIC*: every image except the MSK-4 collection (lesion ids `MSK4_...`), split 70/15/15 by
  lesion; the model trains on train, the risk and its review threshold are chosen on val, the
  comparison is reported on test.
- *external*: the 545 MSK-4 images, ingested test-only (`--fractions 0,0,1`): a collection the
  model never saw in any split.

Steps, each skipped when its output exists (the script is resumable; run it again to go on):
1. ingest both datasets (`--drop` / `--keep lesion_id=MSK4_*`);
2. train an ERM U-Net on ISIC (`htl-ray train`, 2 workers);
3. score val, test and external with every quality-control signal (`htl-ray score` path);
4. AUROC and AURC per signal with bootstrap 95% CIs; choose the default on val; write the page.

Usage: .venv/bin/python bench/failure_detection.py [--workdir DIR] [--epochs 8]
       [--page docs/quality_control.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from _common import isic_dir, workdir

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_PREFIX = "MSK4_"          # the lesion-id prefix of the external collection


def htl_ray(*args: str) -> None:
    cmd = [str(Path(sys.executable).parent / "htl-ray"), *args]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def prepare(root: Path, src: Path) -> tuple[Path, Path]:
    """The core ISIC dataset without the MSK-4 collection, and MSK-4 alone, test-only
    (`htl-ray data ingest --drop/--keep`). The one image without a metadata row
    (ISIC_0015982) is in the core set: the symlinked subset behind the page's figures
    (commit 8970309) left it out, so a fresh run's core set has 1,460 images, not 1,459."""
    core, external = root / "data" / "isic-core128", root / "data" / "isic-msk4-128"
    held_out = f"lesion_id={HELD_OUT_PREFIX}*"
    if not (core / "manifest.json").is_file():
        htl_ray("data", "ingest", "--layout", "isic", str(src), "--out", str(core), "--size",
                "128", "--drop", held_out)
    if not (external / "manifest.json").is_file():
        htl_ray("data", "ingest", "--layout", "isic", str(src), "--out", str(external),
                "--size", "128", "--keep", held_out, "--all-test")
    return core, external


def train(root: Path, data: Path, epochs: int) -> Path:
    run = root / "runs" / "erm-s0"
    overrides = [f"data.path={data}", f"run.storage_path={root / 'runs'}", "run.name=erm-s0",
                 f"train.epochs={epochs}", f"tracking.uri=sqlite:///{root / 'mlflow.db'}",
                 "tracking.experiment=failure-detection", "htl.method=erm"]
    if not (run / "htl_run.json").is_file():
        htl_ray("train", str(REPO / "experiments" / "isic_supervised_128.yaml"), *overrides)
    elif not any(run.glob("checkpoint_*")) or not _finished(run, epochs):
        htl_ray("train", "--resume", str(run))
    return run


def _finished(run: Path, epochs: int) -> bool:
    import json

    metas = [json.loads(p.read_text()) for p in run.glob("checkpoint_*/meta.json")]
    return any(int(m.get("epoch", -1)) + 1 >= epochs for m in metas)


SPLITS = (("val", "core", "val"), ("test", "core", "test"), ("external", "external", "test"))


def score_all(root: Path, run: Path, datasets: dict[str, Path]):
    """Every quality-control signal on val, test and external (cached as Parquet)."""
    import pandas as pd

    from htl_ray.cluster import init_ray
    from htl_ray.console import show_progress

    show_progress()                      # the cluster's and the scorer's progress lines
    from htl_ray.htl.offline import score_checkpoint
    from htl_ray.run_dir import RunDir

    best = RunDir(run).best_checkpoint()[0]
    tables = {}
    for name, data, split in SPLITS:
        dest = root / "scores" / f"{best.name}_{name}.parquet"
        if not dest.is_file():
            init_ray()
            print(f"scoring {name} ({datasets[data].name}, {split} split) ...", flush=True)
            score_checkpoint(best, datasets[data], split=split, out=dest, batch_size=16)
        tables[name] = pd.read_parquet(dest)
    return best, tables


def compare(tables, n_boot: int):
    from htl_ray.analysis.failure_detection import compare_risks
    from htl_ray.quality import RISKS

    return {name: compare_risks({r: RISKS[r].of(t) for r in RISKS}, t["dense_iou"].to_numpy(),
                                n_boot=n_boot, seed=0)
            for name, t in tables.items()}


def choose(results, tables, n_boot: int) -> dict:
    """The default risk and its review threshold, from val only.

    The best pruning-free risk (highest val AUROC; ties: the fewer signals) is the default
    unless the best risk using h beats it on val with a paired-bootstrap 95% interval of the
    AUROC difference above 0: pruning costs three pruned copies and their forward passes, so
    it must earn its place. The review threshold is Youden's J of the chosen risk on val."""
    from htl_ray.analysis.failure_detection import auroc_difference, youden_threshold
    from htl_ray.metrics import ISIC_JACCARD_THRESHOLD
    from htl_ray.quality import RISKS

    val = results["val"].set_index("risk")
    t = tables["val"]
    failed = t["dense_iou"].to_numpy() < ISIC_JACCARD_THRESHOLD

    def best(names):
        return max(names, key=lambda r: (round(val.loc[r, "auroc"], 3), -len(RISKS[r].signals)))

    free = best([r for r in RISKS if not RISKS[r].needs_pruning])
    pruned = best([r for r in RISKS if RISKS[r].needs_pruning])
    diff = auroc_difference(RISKS[pruned].of(t), RISKS[free].of(t), failed, n_boot=n_boot)
    name = pruned if diff[1] > 0 else free
    thresholds = {r: round(youden_threshold(RISKS[r].of(t), failed), 3) for r in RISKS}
    return {"risk": name, "threshold": thresholds[name], "free": free, "pruned": pruned,
            "diff": diff, "thresholds": thresholds}


def _ci(row, m: str, f: str = ".3f") -> str:
    return f"{row[m]:{f}} [{row[m + '_lo']:{f}}, {row[m + '_hi']:{f}}]"


def page(results, tables, chosen: dict, best: Path, n_boot: int) -> str:
    import json

    from htl_ray.analysis.failure_detection import flag_rates
    from htl_ray.metrics import ISIC_JACCARD_THRESHOLD
    from htl_ray.quality import DEFAULT_RISK, REVIEW_THRESHOLD, RISKS
    from htl_ray.tracking import git_commit

    name, threshold = chosen["risk"], chosen["threshold"]
    meta = json.loads((best / "meta.json").read_text())
    lines = [
        "# Quality control: which label-free risk predicts a failed segmentation?",
        "",
        "<!-- generated by bench/failure_detection.py; do not edit by hand -->",
        "",
        "`htl-ray predict` and `htl-ray score` give every image a *risk*: a number in [0, 1], "
        "computed without labels, that should be high where the predicted mask is a failure "
        "(IoU with the true mask < 0.65, the ISIC 2018 threshold). `predict` flags images with "
        "risk ≥ the review threshold in its `review` column. This page compares the candidate "
        "risks on the same images and says how the shipped default was chosen.",
        "",
        "## Setup",
        "",
        f"- Model: U-Net/ResNet-18 trained with ERM (`htl-ray train "
        f"experiments/isic_supervised_128.yaml`, {meta['epoch'] + 1} epochs, 2 CPU workers, seed "
        f"0); best epoch {meta['epoch'] + 1}, val Dice {meta['metrics']['val/dice']:.3f}.",
        "- *ISIC*: the ISIC 2018 Task 1 images of `../shared/data/isic2018-task1-256` except "
        "the MSK-4 collection, at 128×128, split 70/15/15 by lesion: the model trains on train; "
        "the default risk and its review threshold are chosen on **val**; **test** is reported.",
        "- *external*: the 545 images of the MSK-4 collection (lesion ids `MSK4_…`), ingested "
        "test-only (`--fractions 0,0,1`) and never seen in training or in any choice. It is a "
        "different contributing collection of the ISIC archive, not a different clinic's "
        "device: no second clinic's data (e.g. PH2) is reachable from this machine, so this is "
        "a weaker test of transfer than a truly external site.",
        "- Candidates (`htl_ray/quality.py`): " + "; ".join(
            f"`{r}` {RISKS[r].description}" for r in RISKS) + ".",
        f"- AUROC: for failure (IoU < {ISIC_JACCARD_THRESHOLD}); AURC: area under the "
        "risk–coverage curve with loss 1 − IoU, lower is better, between the optimal ranking's "
        "and a random one's. 95% intervals: percentile bootstrap over images "
        f"({n_boot} resamples, seed 0).",
        f"- Reproduce: `.venv/bin/python bench/failure_detection.py` (about 15 minutes on 2 "
        f"cores, resumable); generated at commit {git_commit()}.",
        "",
    ]
    for split, table in results.items():
        a = table.attrs
        lines += [f"## {split} ({a['images']} images, {a['failed']} failed)", "",
                  "| risk | AUROC [95% CI] | AURC [95% CI] |", "|---|---|---|"]
        for _, row in table.sort_values("auroc", ascending=False).iterrows():
            mark = " **(default)**" if row["risk"] == name else ""
            lines.append(f"| `{row['risk']}`{mark} | {_ci(row, 'auroc')} | {_ci(row, 'aurc')} |")
        lines += ["", f"AURC of the optimal ranking {a['optimal_aurc']:.3f}, of a random one "
                  f"{a['random_aurc']:.3f}.", ""]
    lines += ["## The shipped default", ""]
    val = results["val"].set_index("risk")
    d, lo, hi = chosen["diff"]
    lines.append(
        f"The rule, on val only: the best pruning-free risk (`{chosen['free']}`, val AUROC "
        f"{val.loc[chosen['free'], 'auroc']:.3f}) is the default unless the best risk using h "
        f"(`{chosen['pruned']}`, {val.loc[chosen['pruned'], 'auroc']:.3f}) beats it with a "
        "paired-bootstrap 95% interval of the AUROC difference above 0 — pruning must earn its "
        f"cost. On val the difference is {d:+.3f} [{lo:+.3f}, {hi:+.3f}], so the default is "
        f"**`{name}`**, with review threshold **{threshold}** (Youden's J on val). What that "
        "threshold does:")
    lines += ["", "| split | flagged | failures caught (sensitivity) | good left alone "
              "(specificity) |", "|---|---|---|---|"]
    for split, t in tables.items():
        failed = t["dense_iou"].to_numpy() < ISIC_JACCARD_THRESHOLD
        f = flag_rates(RISKS[name].of(t), failed, threshold)
        lines.append(f"| {split} | {f['flagged']:.1%} | {f['sensitivity']:.1%} | "
                     f"{f['specificity']:.1%} |")
    test, ext = results["test"].set_index("risk"), results["external"].set_index("risk")
    singles = [r for r in RISKS if len(RISKS[r].signals) == 1]
    best_single_test = max(test.loc[singles, "auroc"])
    as_good = test.loc[name, "auroc"] >= best_single_test - 1e-12
    goal = [f"AUROC on ISIC test {test.loc[name, 'auroc']:.3f} (goal ≥ 0.90: "
            f"{'met' if test.loc[name, 'auroc'] >= 0.90 else 'not met'})",
            f"on the external collection {ext.loc[name, 'auroc']:.3f} (goal ≥ 0.85: "
            f"{'met' if ext.loc[name, 'auroc'] >= 0.85 else 'not met'})",
            f"the best single signal on test reaches {best_single_test:.3f} "
            f"({'the default is at least as good' if as_good else 'better than the default'})"]
    h_vs = ("h (pruning) is " + ("not better" if test.loc["h", "auroc"] <= test.loc["tta", "auroc"]
                                 else "better") + f" than tta on test ({test.loc['h', 'auroc']:.3f}"
            f" vs {test.loc['tta', 'auroc']:.3f}) and " + (
                "not better" if ext.loc["h", "auroc"] <= ext.loc["tta", "auroc"] else "better")
            + f" on the external collection ({ext.loc['h', 'auroc']:.3f} vs "
            f"{ext.loc['tta', 'auroc']:.3f}); adding h to tta ({'tta+h'}) gives "
            f"{test.loc['tta+h', 'auroc']:.3f} on test and {ext.loc['tta+h', 'auroc']:.3f} "
            "external. By AURC (lower is better): h "
            f"{test.loc['h', 'aurc']:.3f}, tta {test.loc['tta', 'aurc']:.3f}, tta+h "
            f"{test.loc['tta+h', 'aurc']:.3f} on test; {ext.loc['h', 'aurc']:.3f}, "
            f"{ext.loc['tta', 'aurc']:.3f}, {ext.loc['tta+h', 'aurc']:.3f} external — the "
            "intervals overlap. h needs three pruned copies (three more forward passes and the "
            "pruning itself) against tta's three flipped or rotated passes.")
    lines += ["", "Reading: " + "; ".join(goal) + ". " + h_vs, ""]
    shipped = (DEFAULT_RISK, REVIEW_THRESHOLD) == (name, threshold) and all(
        RISKS[r].review_threshold == v for r, v in chosen["thresholds"].items())
    lines += ["Every other risk gets its own review threshold, chosen the same way on val "
              "(`htl-ray predict --risk NAME` uses it; the scales differ):", "",
              "| risk | review threshold | flagged on test | failures caught on test |",
              "|---|---|---|---|"]
    fail_test = tables["test"]["dense_iou"].to_numpy() < ISIC_JACCARD_THRESHOLD
    for r, v in chosen["thresholds"].items():
        f = flag_rates(RISKS[r].of(tables["test"]), fail_test, v)
        lines.append(f"| `{r}` | {v} | {f['flagged']:.1%} | {f['sensitivity']:.1%} |")
    lines.append("")
    lines += ["A note on how the rule came about: the first run of this bench chose the highest "
              "val AUROC outright, which picked `tta+h` by 0.004 over `tta` — a difference far "
              "inside the bootstrap noise of 219 validation images with 15 failures — and "
              "shipped a default that needs pruning for nothing measurable. The rule above "
              "asks pruning to earn its cost on val instead, as the issue asked (\"if pruning "
              "adds nothing over the cheaper signals, the default is what works best\").", ""]
    lines += [f"`htl_ray/quality.py` ships DEFAULT_RISK = `{DEFAULT_RISK}`, REVIEW_THRESHOLD = "
              f"{REVIEW_THRESHOLD}" + (" and the thresholds above" if shipped else
                                       " — **differs from this run's choices; update it**")
              + ". Whatever the risk, a mask with no lesion pixel (or nothing but lesion) is "
              "flagged for review too. The thresholds were chosen for this "
              "model; on another model or data, choose your own on a labeled validation split: "
              "`htl-ray score CHECKPOINT DATA --split val` prints each risk's AUROC, and "
              "`htl-ray predict --review-threshold R` sets it.", ""]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--page", type=Path, default=REPO / "docs" / "quality_control.md")
    ap.add_argument("--stage", choices=["data", "train", "all"], default="all")
    args = ap.parse_args()
    src = isic_dir()
    if src is None:
        print("error: the ISIC 2018 data is not at ../shared/data/isic2018-task1-256 "
              "(set HTL_RAY_ISIC_DIR)", file=sys.stderr)
        return 2
    root = args.workdir or workdir("failure-detection")
    core, external = prepare(root, src)
    if args.stage == "data":
        return 0
    run = train(root, core, args.epochs)
    if args.stage == "train":
        return 0
    best, tables = score_all(root, run, {"core": core, "external": external})
    results = compare(tables, args.boot)
    chosen = choose(results, tables, args.boot)
    args.page.write_text(page(results, tables, chosen, best, args.boot))
    for split, table in results.items():
        print(f"== {split}")
        print(table[["risk", "auroc", "aurc"]].to_string(index=False))
    print(f"chosen on val: risk {chosen['risk']}, review threshold {chosen['threshold']}")
    print(f"review thresholds on val: {chosen['thresholds']}")
    print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

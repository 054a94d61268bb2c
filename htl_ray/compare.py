"""`htl-ray compare`: runs grouped by configuration, mean and 95% CI over seeds, and the paired
difference to the ERM baseline.

A configuration is a run's logged parameters minus the ones that only name or seed it
(`SEED_LIKE`) and the ones that never change what a run trains (`RESULT_NEUTRAL_KEYS`: scorer
speed, restarts), with its data told by the dataset's fingerprint where the run logged one, not
by the path it lay at (`configuration`: a run trained on another machine and imported is a
seed of the same configuration); runs that share the rest are seeds of one configuration. The
baseline of a group is the baseline-matching group (default `htl.method=erm`) that differs from
it in the fewest parameters; differences are paired by `run.seed` so that seed-to-seed
variation common to both arms cancels. Intervals are Student-t 95% intervals over seeds (or over
seed pairs).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from htl_ray.analysis.stats import mean_ci, paired_difference
from htl_ray.config import DATA_PATH, RESULT_NEUTRAL_KEYS
from htl_ray.errors import UserError
from htl_ray.tables import markdown_table, short_value
from htl_ray.tracking.queries import RunQuery, search
from htl_ray.tracking.schema import DATASET_TAG, ROLE_TAG, SWEEP_ROLE

logger = logging.getLogger(__name__)

SEED_LIKE = frozenset({"run.seed", "run.name", "run.storage_path", "supervision.label_seed",
                       "tracking.uri", "tracking.experiment",
                       "train.evaluate_test"})     # scored on test or not: same training
# what is not part of a configuration's identity
NOT_CONFIGURATION = SEED_LIKE | frozenset(RESULT_NEUTRAL_KEYS)
METRICS = ("dice", "iou", "thresholded_jaccard", "worst_group_dice")
DATA_KEY = "data"   # a configuration's data: the dataset's fingerprint, else where it lay
FINGERPRINT = "fingerprint "     # how a DATA_KEY value that is a fingerprint starts


def configuration(params: dict[str, str], tags: dict[str, str] | None = None
                  ) -> tuple[tuple[str, str], ...]:
    """What a run trained, as a sortable key: its params less `NOT_CONFIGURATION`, and its data
    by fingerprint (the `htl.dataset_fingerprint` tag) where logged — by `data.path` only
    where not, since the same data lies at another path on another machine."""
    key = {k: v for k, v in params.items() if k not in NOT_CONFIGURATION and k != DATA_PATH}
    fingerprint = (tags or {}).get(DATASET_TAG)
    data = FINGERPRINT + fingerprint if fingerprint else params.get(DATA_PATH)
    if data is not None:
        key[DATA_KEY] = data
    return tuple(sorted(key.items()))


def _shown(key: str, value: str | None) -> str:
    """A configuration value as its label shows it: a fingerprint by its first 12 digits (a
    path in full: two paths may share their start)."""
    if key == DATA_KEY and value is not None and value.startswith(FINGERPRINT):
        return value.removeprefix(FINGERPRINT)[:12]
    return short_value(value)


def run_metrics(metrics: dict[str, float], split: str = "val") -> dict[str, float]:
    """The four reported metrics of one run: its best epoch's when logged (`best/<split>/...`),
    else the last logged values. Worst-group Dice is the minimum over the grouping attributes."""
    prefix = f"best/{split}/" if f"best/{split}/dice" in metrics else f"{split}/"
    out = {m: metrics.get(prefix + m, math.nan) for m in METRICS[:3]}
    worst = [v for k, v in metrics.items()
             if k.startswith(prefix + "worst_group/") and k.endswith("/dice")]
    out["worst_group_dice"] = min(worst) if worst else math.nan
    return out


def load_runs(uri: str, experiment: str, filter_string: str = "", *,
              query: RunQuery | None = None) -> pd.DataFrame:
    """FINISHED runs of `experiment` that match `query` and the user's own MLflow
    `filter_string` (`htl-ray compare --filter`), as rows: run_id, name, seed, params (dict),
    metrics, tags (a sweep's groups are tags, and two groups may share a method)."""
    from htl_ray.tracking import client as tracking_client
    from htl_ray.tracking import redact

    client = tracking_client(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        names = sorted(e.name for e in client.search_experiments())
        raise UserError(f"MLflow experiment {experiment!r} not found in {redact(uri)} "
                         f"(experiments there: {', '.join(names) or 'none'})")
    query = replace(query or RunQuery(), status="FINISHED")
    rows = []
    for run in search(client, exp.experiment_id, query, user_filter=filter_string):
        if run.data.tags.get(ROLE_TAG) == SWEEP_ROLE:
            continue                                  # a sweep's parent run is not a training run
        params = dict(run.data.params)
        rows.append({"run_id": run.info.run_id, "name": run.info.run_name,
                     "seed": params.get("run.seed", ""), "params": params,
                     "metrics": dict(run.data.metrics), "tags": dict(run.data.tags)})
    return pd.DataFrame(rows, columns=["run_id", "name", "seed", "params", "metrics", "tags"])


def splits_logged(all_metrics) -> list[str]:
    """The splits some run has a Dice of: val, test, external/<site>, ..."""
    found = set()
    for metrics in all_metrics:
        for key in metrics:
            if key.endswith("/dice") and "/worst_group/" not in key and "/original/" not in key:
                found.add(key.removeprefix("best/").removesuffix("/dice"))
    return sorted(found)


@dataclass
class Comparison:
    table: pd.DataFrame            # one row per configuration, numeric columns
    runs: pd.DataFrame             # one row per run with its group label and metrics
    notes: list[str]

    def markdown(self) -> str:
        t = self.table
        cols = {"configuration": t["configuration"], "n": t["n"]}
        for m in METRICS:
            cols[m] = [_fmt(r[m], r[f"{m}_lo"], r[f"{m}_hi"]) for _, r in t.iterrows()]
        for m in METRICS:
            cols[f"Δ{m}"] = [_fmt(r[f"d_{m}"], r[f"d_{m}_lo"], r[f"d_{m}_hi"], signed=True)
                             for _, r in t.iterrows()]
        cols["baseline"] = t["baseline"]
        out = markdown_table(pd.DataFrame(cols))
        return out + ("\n\n" + "\n".join(f"- {n}" for n in self.notes) if self.notes else "")


def _fmt(m: float, lo: float, hi: float, signed: bool = False) -> str:
    if m != m:
        return ""
    f = "+.4f" if signed else ".4f"
    s = format(m, f)
    return s if lo != lo else f"{s} [{format(lo, f)}, {format(hi, f)}]"


def _matches(params: dict[str, str], baseline: dict[str, str]) -> bool:
    return all(params.get(k) == v for k, v in baseline.items())


def _by_seed(runs: pd.DataFrame, metric: str) -> list[tuple[str, float]]:
    return list(zip(runs["seed"], runs[metric], strict=True))


def compare(runs: pd.DataFrame, split: str = "val",
            baseline: dict[str, str] | None = None) -> Comparison:
    """Group `runs` (from `load_runs`) by configuration and compare each group to its baseline."""
    baseline = {"htl.method": "erm"} if baseline is None else baseline
    if runs.empty:
        raise UserError("no finished runs to compare (check the experiment name and filters)")
    tags = runs["tags"] if "tags" in runs else [None] * len(runs)
    keys = [configuration(p, t) for p, t in zip(runs["params"], tags, strict=True)]
    group_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    config_params = [dict(k) for k in group_of]
    varying = sorted({k for c in config_params for k in c
                      if len({d.get(k) for d in config_params}) > 1})

    def label(c: dict[str, str]) -> str:
        return " ".join(f"{k}={_shown(k, c.get(k))}" for k in varying) or "all runs"

    runs = runs.copy()
    runs["group"] = [group_of[k] for k in keys]
    metrics = pd.DataFrame([run_metrics(m, split) for m in runs["metrics"]], index=runs.index)
    if metrics[list(METRICS[:3])].isna().all().all():
        raise UserError(f"--split {split}: no run has metrics of that split; the runs have "
                         f"{', '.join(splits_logged(runs['metrics'])) or 'none'}")
    runs = pd.concat([runs, metrics], axis=1)
    notes = []
    rows = []
    base_groups = [g for g, c in enumerate(config_params) if _matches(c, baseline)]
    if not base_groups:
        notes.append("no baseline group matches " + ", ".join(
            f"{k}={v}" for k, v in baseline.items()) + ": paired differences are left empty")
    for g, c in enumerate(config_params):
        sub = runs[runs["group"] == g]
        row = {"configuration": label(c), "n": len(sub),
               "seeds": ",".join(sorted(map(str, sub["seed"])))}
        for m in METRICS:
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = mean_ci(sub[m]).as_tuple()
        repeated = sorted(str(v) for v, k in sub["seed"].value_counts().items() if k > 1)
        if repeated:
            notes.append(f"{row['configuration']}: seed(s) {', '.join(repeated)} ran more than "
                         "once (e.g. re-run with another scorer setting); each run counts in n")
        b = None
        if g not in base_groups and base_groups:
            b = min(base_groups, key=lambda bg: (sum(
                c.get(k) != config_params[bg].get(k)
                for k in set(c) | set(config_params[bg])), bg))
        row["baseline"] = label(config_params[b]) if b is not None else ""
        base = runs[runs["group"] == b]        # none without a baseline group: no pairs
        for m in METRICS:
            paired = paired_difference(_by_seed(sub, m), _by_seed(base, m))
            row["pairs"] = paired.pairs           # the same seeds pair for every metric
            row[f"d_{m}"], row[f"d_{m}_lo"], row[f"d_{m}_hi"] = paired.difference.as_tuple()
        if b is not None and row["pairs"] < len(sub):
            notes.append(f"{row['configuration']}: {len(sub) - row['pairs']} run(s) have no "
                         "baseline run with the same seed and are left out of the differences")
        rows.append(row)
    table = pd.DataFrame(rows)
    out_runs = runs.assign(configuration=[label(config_params[g]) for g in runs["group"]])
    return Comparison(table=table, runs=out_runs[["run_id", "name", "configuration", "seed",
                                                  *METRICS]], notes=notes)


def write_comparison(result: Comparison, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md, csv = out_dir / "compare.md", out_dir / "compare.csv"
    md.write_text(result.markdown() + "\n")
    result.table.to_csv(csv, index=False)
    result.runs.to_csv(out_dir / "runs.csv", index=False)
    logger.info(f"[htl-ray] wrote {md}, {csv} and {out_dir / 'runs.csv'}")
    return md, csv


def paired_images(a: pd.DataFrame, b: pd.DataFrame, *,
                  metrics: tuple[str, ...] = ("dice", "iou", "thresholded_jaccard"),
                  n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per-image paired differences a − b of two per-image tables indexed by image id: mean
    of each, mean difference with a bootstrap CI over images, and how many images got better
    or worse. For one training seed per arm this is the uncertainty over the images scored."""
    for name, t in (("first", a), ("second", b)):
        if t.empty or not t.index.is_unique:
            raise UserError(f"the {name} per-image table is empty or lists an image twice")
    if set(a.index) != set(b.index):
        only_a, only_b = len(set(a.index) - set(b.index)), len(set(b.index) - set(a.index))
        raise UserError(f"the two tables cover different images ({only_a} only in the first, "
                         f"{only_b} only in the second): were they scored on the same split?")
    b = b.loc[a.index]
    idx = np.random.default_rng(seed).integers(0, len(a), (n_boot, len(a)))
    rows = []
    for m in metrics:
        diff = (a[m] - b[m]).to_numpy(dtype=float)
        lo, hi = np.percentile(diff[idx].mean(axis=1), [50 - level * 50, 50 + level * 50])
        rows.append({"metric": m, "a": float(a[m].mean()), "b": float(b[m].mean()),
                     "diff": float(diff.mean()), "ci_low": float(lo), "ci_high": float(hi),
                     "better": int((diff > 0).sum()), "worse": int((diff < 0).sum()),
                     "images": len(diff)})
    return pd.DataFrame(rows)


def run_per_image(run_dir: str | Path, split: str = "test") -> pd.DataFrame:
    """The per-image table of a run's best checkpoint on `split`, indexed by image id."""
    from htl_ray.run_dir import STATE_FILE, RunDir
    from htl_ray.train.evaluation import per_sample_file

    run_dir = Path(run_dir)
    if not RunDir(run_dir).has_state():
        raise UserError(f"{run_dir}: not a run directory (no {STATE_FILE})")
    best = RunDir(run_dir).best_checkpoint()
    if best is None:
        raise UserError(f"{run_dir}: no checkpoint")
    path = best[0] / per_sample_file(split)
    if not path.is_file():
        how = (f"--data DATASET --name {split.split('/', 1)[1]}" if split.startswith("external/")
               else f"--split {split}")
        raise UserError(f"{path} missing: score the run on that split first with "
                         f"`htl-ray evaluate {run_dir} {how}`")
    return pd.read_parquet(path).set_index("id")

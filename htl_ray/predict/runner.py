"""`htl-ray predict`: masks, a quality-control risk and a table for every image, streaming.

The output folder holds `<id>_segmentation.png` per image (0/255, the image's own size),
optionally `<id>_probability.png`, `predictions.parquet` + `predictions.csv` (one row per
image), `report.json` (what could not be read or was passed over, with why) and
`predict.json` (the model and settings that made the folder). Rows are appended to
`predictions.partial.jsonl` as batches finish, so an interrupted run loses nothing: running
the same command again predicts only the images without a mask and a row.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from htl_ray.config import ConfigError
from htl_ray.inference import MASK_SUFFIX, PROBABILITY_SUFFIX, ModelBundle
from htl_ray.predict.actor import PredictorActor, PredictSpec
from htl_ray.predict.inputs import Inputs, discover
from htl_ray.quality import DEFAULT_RISK, RISKS, SIGNALS

logger = logging.getLogger(__name__)

TABLE_FILE = "predictions.parquet"
CSV_FILE = "predictions.csv"
PARTIAL_FILE = "predictions.partial.jsonl"
REPORT_FILE = "report.json"
SETTINGS_FILE = "predict.json"
IDENTITY_COLUMNS = ("mlflow_run_id", "checkpoint_epoch", "dataset_fingerprint")

# A prediction folder (`htl-ray predict --out`): relative path → what it holds. The
# documentation's reference is generated from it.
LAYOUT: dict[str, str] = {
    f"<id>{MASK_SUFFIX}": "the predicted mask of one image, 0/255, at the image's own width "
                          "and height",
    f"<id>{PROBABILITY_SUFFIX}": "with --probabilities: the probability map x 255, at the "
                                 "image's own size",
    TABLE_FILE: "one row per image of INPUT: id, source file, original height and width, "
                "predicted lesion share (area_fraction), risk, review, review_reason, the "
                "risk's signals, the file's size and mtime (source_stat; folder inputs) and the "
                "model's identity (" + ", ".join(IDENTITY_COLUMNS) + ")",
    CSV_FILE: f"the same table as {TABLE_FILE}, as CSV",
    PARTIAL_FILE: "rows appended as batches finish, so an interrupted run loses nothing; "
                  f"folded into {TABLE_FILE} and removed when the run ends",
    REPORT_FILE: "the run's account: images, predicted now, already predicted, files that "
                 "could not be read (with why), files passed over (not images), notes, rows "
                 "of images no longer in INPUT (not_in_input_any_more), the model",
    SETTINGS_FILE: "the model (identity, weights checksum, input size), risk and review "
                   "threshold that filled the folder: a run with others is refused",
}


@dataclass
class PredictionOutcome:
    out_dir: Path
    predicted: int                       # this run
    skipped_done: int                    # already written by an earlier run
    unreadable: list[dict[str, str]] = field(default_factory=list)
    passed_over: list[dict[str, str]] = field(default_factory=list)
    table: pd.DataFrame | None = None
    review: int = 0


def writable_folder(out: Path) -> Path:
    """Create `out` and prove it takes a file, before any model is loaded or Ray started."""
    try:
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out: {out} is a file; give a folder for the masks")
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"--out: cannot write in {out} ({exc.strerror or exc})") from None
    return out


def model_settings(bundle: ModelBundle, spec: PredictSpec) -> dict[str, Any]:
    """What must not change between runs that fill one folder."""
    from htl_ray.models import state_checksum

    checksum = state_checksum(bundle.state)      # of the weights: no model built here
    return {"identity": {k: bundle.identity.get(k) for k in IDENTITY_COLUMNS},
            "weights_checksum": round(checksum, 3),
            "input_size": list(bundle.input_size), "risk": spec.risk,
            "review_threshold": spec.review_threshold}


def check_same_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to add to a folder another model (or risk, or threshold) filled. The settings
    are written with the first rows (`write_settings`), so a run that failed before any image
    was predicted does not lock the folder."""
    path = out / SETTINGS_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
    except ValueError:
        before = {}
    changed = sorted(k for k in settings if json.dumps(before.get(k), default=str)
                     != json.dumps(settings[k], default=str))
    if changed:
        raise ConfigError(f"--out: {out} holds predictions made with another "
                          f"{' / '.join(changed)} ({path}); predict into a new folder, or "
                          "remove this one to start again")


def write_settings(out: Path, settings: dict[str, Any]) -> None:
    path = out / SETTINGS_FILE
    if not path.is_file():
        path.write_text(json.dumps(settings, indent=2, default=str))


def read_rows(out: Path) -> pd.DataFrame:
    """Rows of earlier runs: the finished table and the rows appended since (a line cut
    short by an interruption is ignored)."""
    parts = []
    if (out / TABLE_FILE).is_file():
        parts.append(pd.read_parquet(out / TABLE_FILE))
    if (out / PARTIAL_FILE).is_file():
        lines = []
        for line in (out / PARTIAL_FILE).read_text().splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        if lines:
            parts.append(pd.DataFrame(lines))
    if not parts:
        return pd.DataFrame()
    rows = pd.concat(parts, ignore_index=True)
    return rows.drop_duplicates("id", keep="last").reset_index(drop=True)


def done_ids(out: Path, rows: pd.DataFrame, inputs: Inputs, probabilities: bool) -> set[str]:
    """Images an earlier run finished: a row for the same source file, unchanged since (size
    and modification time), and the mask (and probability map) on disk."""
    if rows.empty:
        return set()
    before = {str(r["id"]): r for r in rows.to_dict(orient="records")}
    done = set()
    for item in inputs.rows:
        row = before.get(item["id"])
        if row is None or row.get("source") != _source(item, inputs):
            continue
        if "path" in item and _as_stat(row.get("source_stat")) != _stat(item["path"]):
            continue
        i = item["id"]
        if (out / f"{i}{MASK_SUFFIX}").is_file() and (
                not probabilities or (out / f"{i}{PROBABILITY_SUFFIX}").is_file()):
            done.add(i)
    return done


def _as_stat(value) -> str | None:
    return value if isinstance(value, str) else None


def _source(item: dict, inputs: Inputs) -> str:
    return item["path"] if "path" in item else f"{inputs.source}#{inputs.split}/{item['id']}"


def _dataset_rows(source: Path, split: str, todo: set[str]):
    """The pixels of the rows still to predict, read from the records file into the object
    store before the actors start: once they hold the CPUs, a read task in the same pipeline
    could never be scheduled (the scorer materialises for the same reason)."""
    import ray.data
    from ray.data.expressions import col

    from htl_ray.data.loading import records_path

    cols = ["id", "image", "height", "width", "orig_height", "orig_width"]
    ds = ray.data.read_parquet(records_path(source), columns=[*cols, "split"])
    if split != "all":
        ds = ds.filter(expr=col("split") == split)
    ds = ds.filter(expr=col("id").is_in(sorted(todo)))
    return ds.select_columns(cols).materialize()


class Progress:
    """One line every few seconds: images done of all, rate, unreadable so far."""

    def __init__(self, total: int, every_s: float = 5.0):
        self.total, self.every_s = total, every_s
        self.done = self.errors = 0
        self.t0 = self.last = time.time()

    def add(self, n: int, errors: int) -> None:
        self.done += n
        self.errors += errors
        now = time.time()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            logger.info(f"[htl-ray] predict: {self.done}/{self.total} images ({rate:.1f}/s)"
                        + (f", {self.errors} unreadable" if self.errors else ""))


def default_cpus_per_actor(actors: int) -> float:
    """The cluster's CPUs shared among the actors, but no more than one node holds (an actor
    runs on one node)."""
    import ray

    total = ray.cluster_resources().get("CPU", 1)
    node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")),
               default=total)
    return max(1.0, min(math.floor(total / actors), node))


def predict(model: str | Path, source: str | Path, out: str | Path, *, split: str | None = None,
            risk: str = DEFAULT_RISK, review_threshold: float | None = None,
            probabilities: bool = False, actors: int = 1, cpus_per_actor: float | None = None,
            gpus_per_actor: float = 0.0, batch_size: int = 8, tracking_uri: str | None = None
            ) -> PredictionOutcome:
    """Predict every image of `source` (a folder, or a dataset split) with `model` into `out`."""
    if risk not in RISKS:
        raise ConfigError(f"--risk {risk}: expected one of {', '.join(RISKS)}")
    if actors < 1 or batch_size < 1:
        raise ConfigError("--actors and --batch-size must be at least 1")
    if (cpus_per_actor is not None and cpus_per_actor <= 0) or gpus_per_actor < 0:
        raise ConfigError("--cpus-per-actor must be > 0 and --gpus-per-actor >= 0")
    if review_threshold is not None and not 0 <= review_threshold <= 1:
        raise ConfigError(f"--review-threshold {review_threshold:g}: a risk is in [0, 1]")
    inputs: Inputs = discover(source, split, exclude=Path(out))
    # the folders this call creates (--out new/out: new/ too), removed again on a failed start
    created = [p for p in [Path(out).absolute(), *Path(out).absolute().parents]
               if not p.exists()]
    out = writable_folder(Path(out))
    try:
        return _predict(model, source, out, inputs, split=split, risk=risk,
                        review_threshold=review_threshold, probabilities=probabilities,
                        actors=actors, cpus_per_actor=cpus_per_actor,
                        gpus_per_actor=gpus_per_actor, batch_size=batch_size,
                        tracking_uri=tracking_uri)
    except BaseException:
        for folder in created:                # deepest first; only if nothing was written
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()                # a failed start leaves no empty folder behind
        raise


def _predict(model, source, out: Path, inputs: Inputs, *, split, risk, review_threshold,
             probabilities, actors, cpus_per_actor, gpus_per_actor, batch_size, tracking_uri
             ) -> PredictionOutcome:
    from htl_ray.predict.source import load_model

    bundle = load_model(model, tracking_uri)
    spec = PredictSpec(out_dir=str(out.resolve()), risk=risk,
                       review_threshold=RISKS[risk].review_threshold if review_threshold is None
                       else review_threshold, probabilities=probabilities,
                       batch_size=batch_size, pool_size=actors, gpus_per_actor=gpus_per_actor)
    settings = model_settings(bundle, spec)
    check_same_settings(out, settings)
    previous = read_rows(out)
    done = done_ids(out, previous, inputs, probabilities)
    # files found unreadable before and not changed since are reported again, not re-read
    known_bad = {u["file"]: u for u in _previous_unreadable(out)
                 if u.get("stat") == _stat(u["file"])}
    todo = [r for r in inputs.rows if r["id"] not in done and r.get("path") not in known_bad]
    unreadable: list[dict[str, Any]] = [known_bad[r["path"]] for r in inputs.rows
                                        if r["id"] not in done and r.get("path") in known_bad]
    logger.info(f"[htl-ray] predict: {len(inputs.rows)} images in {source}"
                + (f" ({split} split)" if split else "")
                + f"; {len(inputs.rows) - len(todo)} already in {out}, {len(todo)} to predict; "
                f"risk {risk} (review at >= {spec.review_threshold})")
    for note in inputs.notes:
        logger.info(f"[htl-ray] note: {note}")
    new_rows = 0
    if todo:
        new_rows, unreadable_now = _run_pool(bundle, spec, inputs, todo, source, split,
                                             cpus_per_actor, out, settings)
        unreadable += unreadable_now
    return _finish(out, inputs, bundle, unreadable, new_rows, len(done & {r["id"] for r in
                                                                          inputs.rows}))


def check_room(spec: PredictSpec) -> None:
    """The actors must fit in what the cluster has free now: else one error naming the flags,
    before any actor waits for resources that will not come."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    for what, per, flag in (("CPU", spec.cpus_per_actor, "--cpus-per-actor"),
                            ("GPU", spec.gpus_per_actor, "--gpus-per-actor")):
        need = per * spec.pool_size
        if need > free.get(what, 0) + 1e-9:
            raise ConfigError(
                f"--actors {spec.pool_size} x {per:g} {what} each ({flag}) = {need:g} {what}s, "
                f"but the Ray cluster has {free.get(what, 0):g} of {total.get(what, 0):g} "
                f"{what}s free; "
                "ask for fewer" + (" (no GPU here: leave --gpus-per-actor at 0)"
                                   if what == "GPU" and not total.get("GPU") else ""))


def _run_pool(bundle: ModelBundle, spec: PredictSpec, inputs: Inputs, todo: list[dict],
              source, split, cpus_per_actor, out: Path, settings: dict[str, Any]):
    import ray
    import ray.data
    from ray.data import ActorPoolStrategy

    from htl_ray.cluster import init_ray
    from htl_ray.htl.scorer import ScorerUnschedulable, wait_for_room

    init_ray()
    spec.cpus_per_actor = cpus_per_actor or default_cpus_per_actor(spec.pool_size)
    check_room(spec)
    if inputs.kind == "dataset":
        ds = _dataset_rows(Path(source), split, {r["id"] for r in todo})
    else:
        blocks = max(1, min(len(todo), max(4 * spec.pool_size,
                                           math.ceil(len(todo) / spec.batch_size))))
        ds = ray.data.from_items(todo, override_num_blocks=blocks)
    ref = ray.put(bundle)
    predicted = ds.map_batches(
        PredictorActor, fn_constructor_kwargs={"spec": spec, "bundle_ref": ref},
        compute=ActorPoolStrategy(size=spec.pool_size), batch_size=spec.batch_size,
        batch_format="numpy", num_cpus=spec.cpus_per_actor,
        num_gpus=spec.gpus_per_actor or None)
    try:
        wait_for_room(spec)
    except ScorerUnschedulable:
        raise ConfigError(f"predict: {spec.pool_size} actor(s) of {spec.cpus_per_actor:g} CPU"
                          f" (+{spec.gpus_per_actor:g} GPU) could not start within "
                          f"{spec.start_timeout_s:g} s: the cluster's resources are held "
                          "elsewhere; ask for fewer with --actors / --cpus-per-actor, or "
                          "wait for the other work to end") from None
    progress = Progress(len(todo))
    unreadable: list[dict[str, str]] = []
    n = 0
    identity = {k: bundle.identity.get(k) for k in IDENTITY_COLUMNS}
    partial_path = out / PARTIAL_FILE
    if partial_path.is_file() and partial_path.stat().st_size:
        with open(partial_path, "rb") as f:        # a line cut short by an interruption
            f.seek(-1, os.SEEK_END)
            cut = f.read(1) != b"\n"
        if cut:
            with open(partial_path, "a") as f:
                f.write("\n")
    with open(partial_path, "a") as partial:
        for batch in predicted.iter_batches(batch_size=None, batch_format="pandas"):
            bad = batch["error"] != ""
            for _, r in batch[bad].iterrows():
                unreadable.append({"id": r["id"], "file": r["source"], "reason": r["error"],
                                   "stat": _stat(r["source"])})
            good = batch[~bad].drop(columns=["error"])
            if inputs.kind == "dataset":
                good["source"] = [f"{inputs.source}#{inputs.split}/{i}" for i in good["id"]]
            else:
                good["source_stat"] = [_stat(p) for p in good["source"]]
            if len(good):
                write_settings(out, settings)
            for col, value in identity.items():
                good[col] = value
            for rec in good.to_dict(orient="records"):
                partial.write(json.dumps(rec, default=_plain) + "\n")
            partial.flush()
            n += len(good)
            progress.add(len(batch), int(bad.sum()))
    return n, unreadable


def _stat(path: str) -> str | None:
    """'<size>:<mtime_ns>' of a file: an unchanged file has the same."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}"


def _previous_unreadable(out: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads((out / REPORT_FILE).read_text()).get("unreadable", []))
    except (OSError, ValueError, AttributeError):
        return []


def _plain(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(type(value))


def _finish(out: Path, inputs: Inputs, bundle: ModelBundle, unreadable, new_rows: int,
            skipped_done: int) -> PredictionOutcome:
    rows = read_rows(out)
    ids = {r["id"] for r in inputs.rows}
    current = rows["id"].astype(str).isin(ids) if not rows.empty else None
    # the table lists this INPUT's images; rows of images no longer in it (moved, renamed,
    # deleted) are left out of it and listed in the report, their masks left where they are
    stale = [] if rows.empty else [
        {"id": r["id"], "source": r.get("source"), "mask": f"{r['id']}{MASK_SUFFIX}"}
        for r in rows[~current].to_dict(orient="records")]
    table = rows[current] if not rows.empty else rows
    keep = table
    if not keep.empty:
        front = ["id", "source", "height", "width", "area_fraction", "risk", "review",
                 "review_reason", *[s for s in SIGNALS if s in keep], *IDENTITY_COLUMNS]
        keep = keep[[c for c in front if c in keep] + [c for c in keep if c not in front]]
        keep = keep.sort_values("id").reset_index(drop=True)
        tmp = out / f".{TABLE_FILE}.tmp"
        keep.to_parquet(tmp, index=False)
        os.replace(tmp, out / TABLE_FILE)
        keep.to_csv(out / CSV_FILE, index=False)
        (out / PARTIAL_FILE).unlink(missing_ok=True)
    report = {"images": len(inputs.rows), "predicted_now": new_rows,
              "already_predicted": skipped_done, "unreadable": unreadable,
              "passed_over": inputs.skipped, "notes": inputs.notes,
              "not_in_input_any_more": stale, "model": bundle.identity}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=2, default=str))
    review = int(table["review"].sum()) if "review" in table else 0
    logger.info(f"[htl-ray] predict: {new_rows} predicted now, {skipped_done} already there, "
                f"{len(unreadable)} unreadable, {len(inputs.skipped)} passed over (not images); "
                f"{review} of {len(table)} flagged for review")
    if stale:
        logger.info(f"[htl-ray] {len(stale)} image(s) predicted earlier are no longer in "
                    f"INPUT (e.g. {stale[0]['source']}): left out of the table, their masks "
                    f"kept; listed in {out / REPORT_FILE} under not_in_input_any_more")
    for item in unreadable[:10]:
        logger.info(f"[htl-ray]   unreadable: {item['reason']}")
    if len(unreadable) > 10:
        logger.info(f"[htl-ray]   ... {len(unreadable) - 10} more in {out / REPORT_FILE}")
    return PredictionOutcome(out_dir=out, predicted=new_rows, skipped_done=skipped_done,
                             unreadable=unreadable, passed_over=inputs.skipped, table=table,
                             review=review)


__all__ = ["PredictionOutcome", "PredictSpec", "predict"]

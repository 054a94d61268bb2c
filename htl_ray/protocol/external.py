"""External test-only datasets in the protocol: every confirmation run scored on each, so the
results page can say whether what a method gains on the test split transfers to another site.

`htl-ray reproduce --external DATASET` (repeatable) runs `htl-ray evaluate RUN --data DATASET`
on each finished confirmation run trained here that has not been scored on it yet: after each
run, and once more before the page is written. A run copied from an earlier round or imported
from the archive has no checkpoint here, so it cannot be scored; the log says how many.

An external dataset that shares images with what the runs trained or were chosen on (the
train and val splits of a setting's data; `htl_ray.data.overlap`) would say nothing about
another site, and is refused before anything trains (`check_externals`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from htl_ray.analysis.group_effects import external_split
from htl_ray.config import ConfigError
from htl_ray.run_dir import RunDir
from htl_ray.tracking.schema import CONFIRM_ROLE
from htl_ray.tune.space import Sweep

logger = logging.getLogger(__name__)


def check_externals(datasets: list[str | Path], *, sweeps: Iterable[Sweep] = ()
                    ) -> dict[str, Path]:
    """Site name → dataset folder; each must be an ingested dataset with a test split, the
    names (folder names) must differ, and no test image may be one of the images `sweeps`'
    runs train or are chosen on (`refuse_shared_images`)."""
    from htl_ray.data.schema import read_manifest
    from htl_ray.train.trainer import external_name, refuse_shared_images

    out: dict[str, Path] = {}
    for data in datasets:
        path = Path(data).resolve()
        try:
            counts = read_manifest(path).get("split_counts", {})
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ConfigError(f"--external: {exc} (ingest it with `htl-ray data ingest ... "
                              "--all-test`)") from None
        if not counts.get("test"):
            raise ConfigError(f"--external: {path} has no test split (split counts {counts}); "
                              "ingest it test-only with --all-test")
        name = external_name(path, None)
        if name in out:
            raise ConfigError(f"--external: two datasets are named {name!r} ({out[name]} and "
                              f"{path}); the folder's name names the site")
        out[name] = path
    training: dict[Path, list[str]] = {}
    for sweep in sweeps:
        training.setdefault(Path(sweep.base.data.path).resolve(), []).append(
            sweep.settings.name)
    for path in out.values():
        for data, names in training.items():
            refuse_shared_images(path, data, key="--external",
                                 trained_by=f"sweep {', '.join(names)}")
    return out


def score_externals(sweeps: list[Sweep], externals: dict[str, Path]) -> int:
    """Score every finished confirmation run with a run directory here on each external
    dataset it lacks (`external/<name>/dice` in MLflow); returns how many evaluations ran."""
    from htl_ray import tracking
    from htl_ray.train.trainer import evaluate_run

    done, absent = 0, 0
    for sweep in sweeps if externals else []:
        runs_dir = sweep.directory / "runs"
        for path in sorted(runs_dir.glob(f"{CONFIRM_ROLE}-*")) if runs_dir.is_dir() else []:
            run = RunDir(path)
            state = run.state()
            if state is None or not state.mlflow_run_id:
                continue
            mlflow_run = tracking.client(state.tracking_uri).get_run(state.mlflow_run_id)
            if mlflow_run.info.status != "FINISHED":
                continue
            for name, data in externals.items():
                if f"{external_split(name)}/dice" in mlflow_run.data.metrics:
                    continue
                if run.best_checkpoint() is None:
                    absent += 1
                    continue
                evaluate_run(path, data=data, name=name)
                done += 1
    if absent:
        logger.info(f"[htl-ray] reproduce: {absent} external evaluation(s) left out: those "
                    "runs keep no checkpoint here")
    return done

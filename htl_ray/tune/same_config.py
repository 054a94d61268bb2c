"""A child run kept from before must have trained the configuration planned now.

A confirmation or ablation run already on disk, or finished elsewhere and imported from the
protocol archive, is kept instead of trained again; if the sweep's best configuration changed
since (more trials, other settings), mixing its old seeds with new ones would compare two
configurations under one name. These checks refuse that, naming what differs.
"""

from __future__ import annotations

from typing import Any

from htl_ray.config import MACHINE_PATHS, RESULT_NEUTRAL_KEYS, ConfigError, ExperimentConfig
from htl_ray.run_dir import RunDir
from htl_ray.tracking.schema import CONFIRM_ROLE, DATASET_TAG, ORIGIN_TAG
from htl_ray.tune.roles import RUN_KIND

# run identity, tracking, how fast the HTL scorer runs (and how long it may take to start), how
# often a lost worker is restarted:
# none of them changes what a run trains
IGNORED_ON_RESUME = ("run.", "tracking.", *RESULT_NEUTRAL_KEYS)


def refuse_changed_run_dir(run: RunDir, cfg: ExperimentConfig,
                           role: str = CONFIRM_ROLE) -> None:
    """A confirmation (or ablation) run already on disk (`run`) must be the run planned now
    (`cfg`)."""
    state = run.state()
    if state is None:
        return
    from htl_ray.config import from_dict

    old = from_dict(state.config).flat()
    new = cfg.flat()
    differ = differing(old, new, set(old) | set(new), IGNORED_ON_RESUME)
    if differ:
        raise ConfigError(
            f"{run.path}: this {RUN_KIND[role]} run {changed(differ)} Move the "
            f"sweep's runs/{role}-* directories away (or restore the settings) to train the "
            "new configuration")


def refuse_changed_mlflow_run(run, cfg: ExperimentConfig, name: str) -> None:
    """A run finished elsewhere must have run the configuration planned now: the params it
    recorded (keys newer than it are not compared) and, when the data is here, its dataset."""
    differ = mlflow_run_differences(run, cfg)
    if differ:
        raise ConfigError(
            f"MLflow run {run.info.run_id} ({name}, finished elsewhere) {changed(differ)} "
            "To train the new configuration, continue without the archive in a fresh MLflow "
            "store and sweep directory (tracking.uri, sweep.storage_path), or delete the "
            f"imported runs (tag {ORIGIN_TAG})")


def mlflow_run_differences(run, cfg: ExperimentConfig) -> list[str]:
    """What an MLflow run trained differently from `cfg`: the config keys both know (not the
    run's identity, tracking or speed, nor where the data lay), and the dataset when it is
    here (its fingerprint); empty when nothing differs."""
    from htl_ray.data.schema import read_manifest

    old = run.data.params
    new = {k: str(v) for k, v in cfg.flat().items()}
    differ = differing(old, new, set(old) & set(new), IGNORED_ON_RESUME + MACHINE_PATHS)
    try:                                                   # the data, wherever it lies here
        here = read_manifest(cfg.data.path).get("fingerprint")
    except FileNotFoundError:
        here = None
    if here and run.data.tags.get(DATASET_TAG) not in (None, here):
        differ.insert(0, f"the dataset ({DATASET_TAG})")
    return differ


def differing(old: dict[str, Any], new: dict[str, Any], keys: set[str],
              ignored: tuple[str, ...]) -> list[str]:
    return sorted(k for k in keys if not k.startswith(ignored) and old.get(k) != new.get(k))


def changed(differ: list[str]) -> str:
    listed = ", ".join(differ[:4]) + (", ..." if len(differ) > 4 else "")
    return (f"was trained with another configuration than the one planned now ({listed} "
            "differ): the sweep's best configuration or its settings changed.")

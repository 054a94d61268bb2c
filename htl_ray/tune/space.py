"""A sweep file: which experiment to start from, how to search, and the search space.

The space maps dotted config keys to Optuna distributions, written in YAML:

    space:
      train.lr:          {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      htl.lam:           {type: float, low: 0.5, high: 4.0}
      htl.refresh_every: {type: int, low: 1, high: 3}
      htl.attention:     {type: categorical, choices: [reweight, oversample]}
      htl.sparsities:    {type: categorical, choices: [[0.3, 0.5], [0.5, 0.7, 0.9]]}
      htl.max_sparsity:  {type: float, low: 0.5, high: 0.95}

`htl.max_sparsity` is derived: it sets `htl.sparsities` to k evenly spaced levels up to it
(k = the base config's number of sparsities). Categorical choices that are lists (sparsity
sets) are handed to Optuna as their JSON text, which it can store, and decoded for the trial.
Every sampled key is checked against the config schema when the sweep file is read, so a typo
fails before Ray starts.

An optional `ablations:` section names variants of the configuration the sweep will choose,
each a list of overrides (`htl.refresh_every=1`); `htl-ray reproduce` trains each on the train
split and scores it on val only, after the confirmation runs: what else was tried, reported
without reading the test split (`htl_ray.tune.ablation`).

`sweep.comparators` is a list of `htl.method` values (each a group of that name: the chosen
configuration with that method), or a mapping of group names to overrides applied on top of
the chosen configuration — for a round whose sweep searches one thing (down-weighting, say)
while its comparators keep another round's settings:

    comparators:
      erm: [htl.method=erm]
      htl: [htl.method=htl, htl.lam=2.42]

An optional `reuse:` section counts another sweep's finished confirmation runs as this one's
where they trained the same configuration (`htl_ray.tune.reuse`):

    reuse:
      sweep: ../weak.yaml             # that sweep's file (relative to this one)
      archive: ../archive             # where its runs are archived (optional)
      groups: {erm: erm, htl: best}   # this sweep's group: that sweep's group
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna.distributions as od

from htl_ray.config import (
    RESULT_NEUTRAL_KEYS,
    ConfigError,
    ExperimentConfig,
    apply_overrides,
    from_dict,
    load_config,
    read_yaml_mapping,
)

MAX_SPARSITY = "htl.max_sparsity"
SCHEDULERS = ("fifo", "asha")


@dataclass
class SweepSettings:
    """How to search: the `sweep:` section of a sweep file."""

    name: str = "htl-sweep"
    metric: str = "val/dice"
    mode: str = "max"
    num_samples: int = 8
    max_concurrent: int | str = "auto"     # auto = as many trials as the cluster's CPUs hold
    seed: int = 0
    scheduler: str = "fifo"                 # fifo | asha
    grace_period: int = 2                   # ASHA: epochs before a trial can be stopped
    reduction_factor: int = 2
    storage_path: str = "sweeps"
    # --confirm: besides the best config, the same config with each of these htl.method values
    # (erm = the baseline; random = the placebo; loss, el2n = other difficulty scores), or a
    # mapping of group names to the overrides that make each comparator
    comparators: list[str] | dict[str, list[str]] = field(default_factory=lambda: ["erm"])
    # ablations: seeds 0..N-1 of each variant (its Δ is paired with the chosen config's seeds)
    ablation_seeds: int = 1
    # confirmation seeds of this setting in `htl-ray reproduce` (None: its --seeds)
    seeds: int | None = None


@dataclass(frozen=True)
class Reuse:
    """Another sweep whose finished confirmation runs count as this sweep's (`groups`: this
    sweep's group → that sweep's group) where their configuration is the same."""

    sweep_file: Path
    archive: Path | None
    groups: dict[str, str]
    source: Sweep          # that sweep, read (and checked) once with this one


def comparator_groups(comparators: list[str] | dict[str, list[str]]) -> dict[str, list[str]]:
    """`sweep.comparators` as group name → overrides (a list names methods)."""
    if isinstance(comparators, dict):
        return {g: list(o) for g, o in comparators.items()}
    return {m: [f"htl.method={m}"] for m in comparators}


@dataclass
class Sweep:
    """A parsed sweep file: the base experiment, the search settings and the space."""

    path: Path
    base: ExperimentConfig
    base_overrides: list[str]
    settings: SweepSettings
    space: dict[str, od.BaseDistribution]
    base_source: str = ""
    _list_choices: dict[str, bool] = field(default_factory=dict)
    ablations: dict[str, list[str]] = field(default_factory=dict)   # name → overrides
    reuse: Reuse | None = None

    @property
    def comparator_groups(self) -> dict[str, list[str]]:
        """Group name → the overrides that turn the chosen configuration into it."""
        return comparator_groups(self.settings.comparators)

    def confirm_seeds(self, default: int) -> int:
        """This setting's confirmation seeds: `sweep.seeds`, else the protocol's --seeds."""
        return self.settings.seeds or default

    @property
    def directory(self) -> Path:
        return (Path(self.settings.storage_path) / self.settings.name).resolve()

    def overrides_for(self, params: dict[str, Any]) -> list[str]:
        """The dotted overrides one trial applies on top of the base config."""
        out = []
        for key, value in params.items():
            if key == MAX_SPARSITY:
                k = len(self.base.htl.sparsities)
                levels = [round(float(value) * (i + 1) / k, 4) for i in range(k)]
                out.append(f"htl.sparsities={json.dumps(levels)}")
            elif self._list_choices.get(key):
                out.append(f"{key}={value}")          # the JSON text of a list is YAML too
            else:
                out.append(f"{key}={json.dumps(value)}")
        return out

    def config_for(self, params: dict[str, Any], extra: list[str] | None = None,
                   base_raw: dict[str, Any] | None = None) -> ExperimentConfig:
        """The config of one trial: `base_raw` (default: the base config as read) + the
        sampled `params` + `extra` overrides. `base_raw` itself is left untouched."""
        raw = copy.deepcopy(base_raw) if base_raw is not None else self.base.to_dict()
        return from_dict(apply_overrides(raw, self.overrides_for(params) + (extra or [])))


def _distribution(key: str, spec: Any) -> tuple[od.BaseDistribution, bool]:
    """One YAML spec → (Optuna distribution, whether its choices are lists)."""
    where = f"space.{key}"
    if not isinstance(spec, dict) or "type" not in spec:
        raise ConfigError(f"{where}: expected a mapping with a `type` "
                          "(float, int or categorical)")
    kind = spec["type"]
    try:
        if kind in ("float", "int"):
            low, high = spec["low"], spec["high"]
            if not low < high:
                raise ConfigError(f"{where}: expected low < high, got {low} and {high}")
            log = bool(spec.get("log", False))
            if kind == "float":
                return od.FloatDistribution(float(low), float(high), log=log,
                                            step=spec.get("step")), False
            return od.IntDistribution(int(low), int(high), log=log,
                                      step=int(spec.get("step", 1))), False
        if kind == "categorical":
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices:
                raise ConfigError(f"{where}.choices: expected a non-empty list")
            lists = any(isinstance(c, list | dict) for c in choices)
            if lists:
                choices = [json.dumps(c) for c in choices]
            return od.CategoricalDistribution(choices), lists
    except KeyError as exc:
        raise ConfigError(f"{where}: missing {exc.args[0]!r} for type {kind}") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    raise ConfigError(f"{where}.type: expected float, int or categorical, got {kind!r}")


def _settings(raw: Any, where: str) -> SweepSettings:
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping")
    known = SweepSettings.__dataclass_fields__
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key (known: {', '.join(known)})")
    s = SweepSettings(**raw)
    if s.mode not in ("min", "max"):
        raise ConfigError(f"{where}.mode: expected min or max, got {s.mode!r}")
    if s.scheduler not in SCHEDULERS:
        raise ConfigError(f"{where}.scheduler: expected one of {SCHEDULERS}, got {s.scheduler!r}")
    if not isinstance(s.num_samples, int) or s.num_samples < 1:
        raise ConfigError(f"{where}.num_samples: expected a positive integer")
    if not isinstance(s.ablation_seeds, int) or s.ablation_seeds < 1:
        raise ConfigError(f"{where}.ablation_seeds: expected a positive integer")
    if s.seeds is not None and (not isinstance(s.seeds, int) or isinstance(s.seeds, bool)
                                or s.seeds < 1):
        raise ConfigError(f"{where}.seeds: expected a positive integer (this setting's "
                          f"confirmation seeds) or nothing (reproduce --seeds), got {s.seeds!r}")
    if s.max_concurrent != "auto" and (not isinstance(s.max_concurrent, int)
                                       or s.max_concurrent < 1):
        raise ConfigError(f"{where}.max_concurrent: expected `auto` or a positive integer")
    from htl_ray.config import HtlConfig

    methods = HtlConfig.__dataclass_fields__["method"].metadata["choices"]
    if isinstance(s.comparators, dict):
        for group, overrides in s.comparators.items():
            if not isinstance(group, str) or not ABLATION_NAME.fullmatch(group) \
                    or group == "best":
                raise ConfigError(f"{where}.comparators: group name {group!r}: expected "
                                  "lower-case letters, digits and dashes, not `best` (it "
                                  "names the run directories)")
            if not isinstance(overrides, list) or not all(
                    isinstance(o, str) and "=" in o for o in overrides):
                raise ConfigError(f"{where}.comparators.{group}: expected a list of key=value "
                                  f"overrides, got {overrides!r}")
            method = next((o.split("=", 1)[1].strip() for o in overrides
                           if o.split("=", 1)[0].strip() == "htl.method"), None)
            named = group.removesuffix("-up")
            if named in methods and method not in (None, named):
                # erm and random are the verdict's baselines by name: the name must not lie
                raise ConfigError(f"{where}.comparators.{group}: a group named after a method "
                                  f"runs that method, got htl.method={method}")
    elif not isinstance(s.comparators, list) or not all(m in methods for m in s.comparators) \
            or len(set(s.comparators)) < len(s.comparators):
        raise ConfigError(f"{where}.comparators: expected a list of distinct htl.method values "
                          f"({', '.join(methods)}) or a mapping of group names to overrides, "
                          f"got {s.comparators!r}")
    return s


def _refuse_negative_soft(space: dict[str, Any], base: ExperimentConfig, path: Path) -> None:
    """λ < 0 (down-weighting) needs hard weights; the corner check pairs each range's ends
    with the first and last choices only, so a soft choice beside a negative λ is caught here
    before a trial would fail."""
    lam, weighting = space.get("htl.lam"), space.get("htl.weighting")
    negative = isinstance(lam, dict) and isinstance(lam.get("low"), int | float) \
        and lam["low"] < 0
    soft = base.htl.weighting == "soft" if weighting is None else (
        isinstance(weighting, dict) and "soft" in (weighting.get("choices") or []))
    if negative and soft:
        raise ConfigError(f"{path}: space: htl.lam can be < 0 (down-weighting) where "
                          "htl.weighting can be soft; down-weighting needs hard weights")


_READING: set[Path] = set()        # sweep files whose reuse: is being read (circles)


def _reuse(raw: Any, path: Path, groups: list[str]) -> Reuse | None:
    """The `reuse:` section, its files found beside the sweep file, its groups checked against
    both sweeps' confirmation groups."""
    where = f"{path}: reuse"
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"sweep", "archive", "groups"} \
            or not {"sweep", "groups"} <= set(raw):
        raise ConfigError(f"{where}: expected a mapping with sweep (a sweep file), groups (this "
                          f"sweep's group: that sweep's group) and optionally archive, got "
                          f"{raw!r}")
    source = path.parent / str(raw["sweep"])
    if not source.is_file():
        raise ConfigError(f"{where}.sweep: sweep file not found: {source}")
    archive = path.parent / str(raw["archive"]) if raw.get("archive") is not None else None
    if archive is not None and not archive.is_dir():
        raise ConfigError(f"{where}.archive: not a folder: {archive}")
    mapping = raw["groups"]
    if not isinstance(mapping, dict) or not mapping:
        raise ConfigError(f"{where}.groups: expected a mapping of this sweep's groups to that "
                          f"sweep's, got {mapping!r}")
    if source.resolve() in _READING:
        raise ConfigError(f"{where}.sweep: {source} reuses this sweep's runs in turn (a circle "
                          "of reuse: sections); one round reuses an earlier one")
    _READING.add(path.resolve())
    try:
        earlier = load_sweep(source)
        theirs = ["best", *comparator_groups(earlier.settings.comparators)]
    finally:
        _READING.discard(path.resolve())
    if len(set(mapping.values())) < len(mapping):
        raise ConfigError(f"{where}.groups: each of that sweep's groups counts as one of this "
                          f"sweep's at most, got {mapping!r}")
    for mine, other in mapping.items():
        if mine not in groups:
            raise ConfigError(f"{where}.groups: {mine!r} is not a confirmation group of this "
                              f"sweep (it has {', '.join(groups)})")
        if other not in theirs:
            raise ConfigError(f"{where}.groups.{mine}: {other!r} is not a confirmation group of "
                              f"{source} (it has {', '.join(theirs)})")
    return Reuse(source, archive, {str(k): str(v) for k, v in mapping.items()}, earlier)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file. `overrides` (dotted key=value) apply to the base experiment
    config, except `sweep.*` ones, which change the search settings (e.g. sweep.num_samples=4)."""
    path = Path(path)
    raw = read_yaml_mapping(path, "sweep file")
    unknown = sorted(set(raw) - {"base", "overrides", "sweep", "space", "ablations", "reuse"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r} "
                          "(expected base, overrides, sweep, space, ablations, reuse)")
    base_path = raw.get("base")
    source = ""
    if base_path is not None and not isinstance(base_path, str):
        raise ConfigError(f"{path}: base: expected the path of a config file, got "
                          f"{type(base_path).__name__} {base_path!r}")
    if base_path is not None:
        candidates = [Path(base_path), path.parent / base_path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise ConfigError(f"{path}: base: config file not found: {base_path} (looked in the "
                              f"working directory and beside the sweep file)")
        source = str(found)
    overrides = list(overrides or [])
    sweep_overrides = [o for o in overrides if o.startswith("sweep.")]
    ablation_overrides = [o for o in overrides if o.startswith("ablations.")]
    base_overrides = [str(o) for o in (raw.get("overrides") or [])] + [
        o for o in overrides if not o.startswith(("sweep.", "ablations."))]
    if ablation_overrides:
        raw["ablations"] = _override_ablations(raw.get("ablations"), ablation_overrides, path)
    if sweep_overrides:
        from htl_ray.config import parse_override

        settings = dict(raw.get("sweep") or {})
        for item in sweep_overrides:
            key, value = parse_override(item)
            settings[key.split(".", 1)[1]] = value
        raw["sweep"] = settings
    base = load_config(source or None, base_overrides)
    if not isinstance(raw.get("space"), dict) or not raw["space"]:
        raise ConfigError(f"{path}: space: expected a mapping of dotted config keys to "
                          "distributions")
    space, lists = {}, {}
    flat = base.flat()
    for key, spec in raw["space"].items():
        if key != MAX_SPARSITY and key not in flat:
            raise ConfigError(f"space.{key}: not a config key (e.g. htl.lam, train.lr, "
                              f"or the derived {MAX_SPARSITY})")
        space[key], lists[key] = _distribution(key, spec)
    _refuse_negative_soft(raw["space"], base, path)
    sweep = Sweep(path=path, base=base, base_overrides=base_overrides,
                  settings=_settings(raw.get("sweep"), f"{path}: sweep"), space=space,
                  base_source=source, _list_choices=lists,
                  ablations=_ablations(raw.get("ablations"), f"{path}: ablations"))
    sweep.reuse = _reuse(raw.get("reuse"), path, ["best", *sweep.comparator_groups])
    # every corner of the space must be a valid config: try the low and high ends now
    same_at_corners: dict[str, int] = {}    # ablation → corners where it changes nothing
    for corner in (0, -1):
        params = {k: _corner(d, corner) for k, d in space.items()}
        try:
            sweep.config_for(params)
        except ConfigError as exc:
            raise ConfigError(f"{path}: space: a sampled config would be invalid: {exc}") from None
        s = sweep.settings
        if s.scheduler == "asha" and not 0 < s.grace_period < sweep.base.train.epochs:
            raise ConfigError(f"{path}: sweep.grace_period: ASHA judges trials after this many "
                              f"epochs; expected 1 to train.epochs − 1 "
                              f"({sweep.base.train.epochs - 1}), got {s.grace_period}")
        for group, extra in sweep.comparator_groups.items():   # the --confirm runs, now
            try:
                sweep.config_for(params, extra)
            except ConfigError as exc:
                raise ConfigError(f"{path}: sweep.comparators: {group} does not fit the base "
                                  f"config: {exc}") from None
        chosen = sweep.config_for(params).flat()
        for name, extra in sweep.ablations.items():      # and the ablation runs
            try:
                if sweep.config_for(params, extra).flat() == chosen:
                    same_at_corners[name] = same_at_corners.get(name, 0) + 1
            except ConfigError as exc:
                raise ConfigError(f"{path}: ablations.{name}: {exc}") from None
    for name, corners in same_at_corners.items():
        if corners == 2:                 # not a swept value: the same whatever the sweep picks
            raise ConfigError(f"{path}: ablations.{name}: {', '.join(sweep.ablations[name])} "
                              "changes nothing: the base config has it already")
    return sweep


def _override_ablations(raw: Any, overrides: list[str], path: Path) -> dict[str, Any]:
    """`ablations.NAME=[key=value, ...]` adds or replaces a variant, `ablations.NAME=null`
    drops it: the GPU overrides change a variant that the CPU file names."""
    from htl_ray.config import parse_override

    out = dict(raw) if isinstance(raw, dict) else {}
    for item in overrides:
        key, value = parse_override(item)
        name = key.split(".", 1)[1]
        if value is None:
            if name not in out:
                raise ConfigError(f"{item}: {path} has no ablation {name!r} to drop (it has: "
                                  f"{', '.join(out) or 'none'})")
            out.pop(name)
        else:
            out[name] = value
    return out


ABLATION_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
# keys an ablation may not set: the confirmation runs' (method, seed), or none of the training's
NOT_A_VARIANT = ("htl.method", "run.", "tracking.", "train.evaluate_test")


def _ablations(raw: Any, where: str) -> dict[str, list[str]]:
    """`name: [dotted overrides]`; the name becomes part of a run directory's name."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of variant names to lists of overrides")
    out = {}
    for name, overrides in raw.items():
        if not isinstance(name, str) or not ABLATION_NAME.fullmatch(name):
            raise ConfigError(f"{where}: variant name {name!r}: expected lower-case letters, "
                              "digits and dashes (it names the run directory)")
        if not isinstance(overrides, list) or not overrides or not all(
                isinstance(o, str) and "=" in o for o in overrides):
            raise ConfigError(f"{where}.{name}: expected a non-empty list of key=value "
                              f"overrides, got {overrides!r}")
        keys = [o.split("=", 1)[0].strip() for o in overrides]
        if any(k.startswith(NOT_A_VARIANT) or k in RESULT_NEUTRAL_KEYS for k in keys):
            raise ConfigError(f"{where}.{name}: a variant changes how the chosen HTL "
                              "configuration trains, not its method, seed, name, tracking, "
                              "test scoring or speed (got "
                              f"{', '.join(k for k in keys)})")
        out[name] = list(overrides)
    return out


def _corner(dist: od.BaseDistribution, end: int) -> Any:
    if isinstance(dist, od.CategoricalDistribution):
        return dist.choices[end]
    return dist.low if end == 0 else dist.high

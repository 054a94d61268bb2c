"""Typed experiment configuration: YAML file + dotted CLI overrides, validated before Ray starts.

Every field is declared once, with its type and allowed range, in the dataclasses below; the
loader walks a plain dict against them so that a typo, a wrong type or an out-of-range value
fails with one message that names the dotted key — before any cluster or tracking server is
touched.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from htl_ray.errors import UserError, first_line


class ConfigError(UserError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


# Keys that change how fast or how robustly a run goes, never what it trains: resuming a run
# with other values is allowed, and runs that differ only in them (or that predate one of them,
# and so never logged it) are seeds of one configuration in comparisons. Exact flat keys, not
# prefixes (`compare` matches them exactly).
RESULT_NEUTRAL_KEYS = ("htl.scorer_threads", "htl.scorer_batch_size",
                       "htl.scorer_start_timeout_s", "train.max_failures")
# where the data and an initial checkpoint lie on the machine that trained a run: the same files
# lie elsewhere on another machine (a run's data is told by its fingerprint, the
# `htl.dataset_fingerprint` tag, where one was logged)
DATA_PATH = "data.path"
MACHINE_PATHS = (DATA_PATH, "model.init_checkpoint")


class RegistryNames:
    """The names a key accepts, read from the registry that implements them (e.g.
    `htl_ray.htl.attention.METHODS`) when a value is checked — so a method added there is
    accepted here without retyping its name, and loading a config imports no torch until a
    value needs checking. Iterating, `in` and `len` read the registry."""

    def __init__(self, module: str, attribute: str):
        self.module, self.attribute = module, attribute

    def names(self) -> tuple[str, ...]:
        return tuple(getattr(importlib.import_module(self.module), self.attribute))

    def __iter__(self):
        return iter(self.names())

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        return f"{self.module}.{self.attribute}"


def _spec(default: Any = dataclasses.MISSING, *, lo: float | None = None,
          hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
          choices: tuple | RegistryNames | None = None, help: str = "", factory: Any = None) -> Any:
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": choices, "help": help}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunConfig:
    name: str = _spec("htl-run", help="run name; the run directory is storage_path/name")
    storage_path: str = _spec("htl_runs", help="directory of run directories (checkpoints, "
                                               "HTL tables); on several nodes a shared mount")
    shared_storage: bool = _spec(False, help="storage_path and data.path are on a filesystem "
                                             "every node mounts at the same path (NFS, EFS, "
                                             "Lustre); required on multi-node clusters")
    seed: int = _spec(0, lo=0, help="seeds model initialisation, augmentation and shuffling "
                                    "(the data split has its own seed, at ingest)")


@dataclass
class AugmentConfig:
    hflip: float = _spec(0.5, lo=0, hi=1, help="probability of a horizontal flip")
    vflip: float = _spec(0.5, lo=0, hi=1, help="probability of a vertical flip")
    rotate90: float = _spec(0.5, lo=0, hi=1, help="probability of a random k*90 degree rotation")
    brightness: float = _spec(0.1, lo=0, hi=1, help="colour jitter: max relative change")
    contrast: float = _spec(0.1, lo=0, hi=1, help="colour jitter: max relative change of "
                                                  "contrast")
    saturation: float = _spec(0.1, lo=0, hi=1, help="colour jitter: max relative change of "
                                                    "saturation")


@dataclass
class DataConfig:
    path: str = _spec("data/synthetic", help="dataset written by `htl-ray data ingest|synth`")
    batch_size: int = _spec(16, lo=1, help="training images per batch, per worker")
    val_batch_size: int = _spec(32, lo=1, help="images per batch in validation and "
                                               "evaluation")
    limit_train: int = _spec(0, lo=0, help="use only the first N training rows (0 = all)")
    augment: AugmentConfig = _spec(factory=AugmentConfig)


@dataclass
class ModelConfig:
    arch: str = _spec("unet", help="smp architecture name (unet, fpn, deeplabv3plus, ...)")
    encoder: str = _spec("resnet18", help="smp encoder name (resnet18, resnet34, ...)")
    encoder_weights: str | None = _spec(None, help="None = random init; no download at run time")
    in_channels: int = _spec(3, lo=1, help="input channels of the model (3: RGB)")
    decoder_channels: list[int] | None = _spec(
        None, help="U-Net decoder widths, e.g. [128, 64, 32, 16, 8] (None = smp default)")
    init_checkpoint: str | None = _spec(
        None, help="start from these weights instead of random init: an htl-ray checkpoint "
                   "directory (or its checkpoint.pt; the model it evaluated) or a file holding "
                   "a state_dict of the same model. Weights only: a new optimiser and schedule "
                   "(`--resume` continues a run instead)")


@dataclass
class TrainConfig:
    epochs: int = _spec(10, lo=1, help="training epochs (the cosine schedule spans them)")
    lr: float = _spec(1e-3, lo=0, lo_open=True, help="initial learning rate")
    weight_decay: float = _spec(1e-4, lo=0, help="weight decay of the optimiser")
    optimizer: str = _spec("adamw", choices=RegistryNames("htl_ray.train.optimization",
                                                          "OPTIMIZERS"),
                           help="AdamW, Adam, or SGD with momentum 0.9")
    scheduler: str = _spec("cosine", choices=RegistryNames("htl_ray.train.optimization",
                                                           "SCHEDULERS"),
                           help="learning-rate schedule: cosine decay over the epochs, or a "
                                "constant rate (none)")
    loss: str = _spec("bce_dice", choices=RegistryNames("htl_ray.losses", "LOSSES"),
                      help="focal_dice replaces BCE by focal loss (the focal comparator)")
    focal_gamma: float = _spec(2.0, lo=0, help="γ of the focal loss (train.loss=focal_dice)")
    bce_weight: float = _spec(1.0, lo=0, help="weight of the BCE (or focal) term of the "
                                              "per-image loss")
    dice_weight: float = _spec(1.0, lo=0, help="weight of the 1 − soft Dice term of the "
                                               "per-image loss")
    keep_checkpoints: int = _spec(2, lo=1, help="keep the best N checkpoints")
    checkpoint_metric: str = _spec("val/dice", help="metric that picks the best checkpoints "
                                                    "(higher is better)")
    evaluate_test: bool = _spec(True, help="after training, score the best checkpoint on the "
                                           "test split (best/test/* metrics); sweep trials "
                                           "turn it off, so tuning never sees the test images")
    max_failures: int = _spec(0, lo=-1, help="worker-group restarts allowed (-1 = unlimited)")
    precision: str = _spec("auto", choices=RegistryNames("htl_ray.device", "PRECISIONS"),
                           help="auto: bf16 autocast on GPUs that support it, fp32 on CPU")
    memory_format: str = _spec("auto", choices=RegistryNames("htl_ray.device", "MEMORY_FORMATS"),
                               help="auto: channels-last on GPU, contiguous on CPU")


DEFAULT_SPARSITIES = (0.3, 0.5, 0.7)     # htl.sparsities, `score` and `predict --risk h`


@dataclass
class HtlConfig:
    """HTL attention and its comparators (docs/method.md §Scoring, §Comparators)."""

    method: str = _spec("erm", choices=RegistryNames("htl_ray.htl.attention", "METHODS"),
                        help="which samples get attention: pruning disagreement (htl), a placebo "
                             "(random), per-sample loss, EL2N, TTA disagreement (tta), "
                             "predictive entropy, none (erm), or focal loss")
    attention: str = _spec("reweight", choices=RegistryNames("htl_ray.htl.attention", "ATTENTION"),
                           help="how the weights act: as loss weights (reweight), as "
                                "sampling rates (oversample), or both (√w each)")
    weighting: str = _spec("hard", choices=RegistryNames("htl_ray.htl.attention", "WEIGHTINGS"),
                           help="hard: 1 + λ·1[HTL]; soft: 1 + λ·h/mean(h); renormalised to "
                                "mean 1")
    lam: float = _spec(1.0, lo=-1, lo_open=True,
                       help="λ: extra weight of HTL samples; in (−1, 0) they are down-weighted "
                            "(hard weighting only)")
    q: float = _spec(0.2, lo=0, hi=1, lo_open=True, help="top-q fraction is HTL")
    tau: float | None = _spec(None, lo=0, hi=1, help="threshold on h instead of top-q")
    sparsities: list[float] = _spec(factory=lambda: list(DEFAULT_SPARSITIES),
                                    help="sparsity of each pruned copy, each in (0, 1); h is "
                                         "the mean disagreement over them")
    pruning: str = _spec("l1_unstructured",
                          choices=RegistryNames("htl_ray.pruning", "PRUNING_METHODS"),
                          help="global L1 magnitude pruning of conv/linear weights "
                               "(l1_unstructured) or structured channel pruning (channel_l2)")
    refresh_every: int = _spec(2, lo=1, help="R: re-score every R epochs")
    beta: float = _spec(0.5, lo=0, hi=1, hi_open=True, help="EMA of h across refreshes")
    warmup_epochs: int = _spec(1, lo=0, help="E0: no attention before this epoch")
    gt_aware: bool = _spec(False, help="add the GT-aware term max(0, IoU_d − IoU_s)")
    population: int = _spec(1, lo=1, help="M: PIE population of the last M snapshots")
    asynchronous: bool = _spec(True, help="train on while the refresh scores")
    scorer_actors: int = _spec(1, lo=1, help="scorer actors in a refresh's pool")
    scorer_cpus: float = _spec(1.0, lo=0, help="CPUs each scorer actor holds")
    scorer_gpus: float = _spec(0.0, lo=0, help="GPU share each scorer actor holds (e.g. 0.25)")
    scorer_batch_size: int = _spec(32, lo=1, help="images per scoring batch")
    scorer_threads: int = _spec(0, lo=0,
                                help="torch threads per scorer actor (0: one per scorer CPU); "
                                     "with synchronous refresh the trainers wait while it "
                                     "scores, so it may use their cores too")
    scorer_start_timeout_s: float = _spec(
        600.0, lo=0, help="a refresh fails with a clear error when its scorer actors cannot "
                          "start within this many seconds (CPUs held elsewhere); 0: wait as "
                          "long as Ray Data does")


@dataclass
class SupervisionConfig:
    """Which labels training sees (docs/method.md §Settings); evaluation always uses full masks."""

    setting: str = _spec("supervised", choices=RegistryNames("htl_ray.supervision.settings",
                                                             "SETTINGS"),
                         help="supervised: masks; semi: a fraction f of masks + Mean Teacher; "
                              "weak: boxes derived from the masks")
    label_fraction: float = _spec(1.0, lo=0, hi=1, lo_open=True,
                                  help="f: fraction of training images that keep their mask "
                                       "(supervised trains on that subset alone)")
    label_seed: int | None = _spec(None, lo=0, help="seed of the labeled subset (None = run.seed)")
    labeled_share: float = _spec(0.5, lo=0, hi=1, hi_open=True,
                                 help="semi: labeled rows are repeated until they are about this "
                                      "share of an epoch (0 = natural share f)")
    ema_decay: float = _spec(0.99, lo=0, hi=1, hi_open=True, help="Mean Teacher EMA decay")
    consistency_weight: float = _spec(1.0, lo=0, help="semi: weight of the Mean Teacher "
                                                      "consistency term (after ramp-up)")
    consistency_rampup_epochs: int = _spec(5, lo=0, help="sigmoid ramp-up of the weight")
    noise_std: float = _spec(0.05, lo=0, help="Gaussian input noise of student and teacher")
    box_jitter: float = _spec(0.0, lo=0, hi=1,
                              help="σ of box-corner jitter as a fraction of box width/height")
    projection_weight: float = _spec(1.0, lo=0, help="weak: weight of the box-projection term "
                                                     "of the box loss")
    pairwise_weight: float = _spec(1.0, lo=0, help="colour-affinity term of the box loss")
    pairwise_threshold: float = _spec(0.3, lo=0, hi=1,
                                      help="colour similarity above which neighbours should agree")
    pairwise_warmup_epochs: int = _spec(2, lo=0, help="pairwise term ramps in linearly")


@dataclass
class ScalingConfig:
    num_workers: int = _spec(2, lo=1, help="Ray Train workers (DDP ranks)")
    use_gpu: bool = _spec(False, help="a GPU per worker (or the GPU share in "
                                      "resources_per_worker), NCCL")
    resources_per_worker: dict[str, float] = _spec(
        factory=lambda: {"CPU": 1.0}, help="Ray resources each worker holds, e.g. {CPU: 0.5} or "
                                           "{CPU: 2, GPU: 0.25}")
    torch_threads: int = _spec(0, lo=0, help="torch intra-op threads per worker (0 = CPU share)")


@dataclass
class TrackingConfig:
    uri: str | None = _spec(None, help="MLflow URI; MLFLOW_TRACKING_URI wins; default sqlite")
    experiment: str = _spec("htl-ray", help="MLflow experiment name")


@dataclass
class ExperimentConfig:
    run: RunConfig = _spec(factory=RunConfig)
    data: DataConfig = _spec(factory=DataConfig)
    model: ModelConfig = _spec(factory=ModelConfig)
    train: TrainConfig = _spec(factory=TrainConfig)
    htl: HtlConfig = _spec(factory=HtlConfig)
    supervision: SupervisionConfig = _spec(factory=SupervisionConfig)
    scaling: ScalingConfig = _spec(factory=ScalingConfig)
    tracking: TrackingConfig = _spec(factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. {'train.lr': 0.001}: MLflow params and run names use it."""
        return flatten(self.to_dict())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Check `value` against the annotation `tp`; ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        (itype,) = typing.get_args(tp)
        return [_coerce(f"{key}[{i}]", v, itype) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        _, vtype = typing.get_args(tp)
        return {str(k): _coerce(f"{key}.{k}", v, vtype) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float and isinstance(value, list):
        raise ConfigError(f"{key}: expected a number, got list {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: expected a finite number, got {value!r}")
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported type {_type_name(tp)}")


def _check_range(key: str, value: Any, meta: dict[str, Any]) -> None:
    if value is None:
        return
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{key}: expected one of {list(choices)}, got {value!r}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and (value <= lo if meta.get("lo_open") else value < lo):
        op = ">" if meta.get("lo_open") else ">="
        raise ConfigError(f"{key}: must be {op} {lo}, got {value!r}")
    if hi is not None and (value >= hi if meta.get("hi_open") else value > hi):
        op = "<" if meta.get("hi_open") else "<="
        raise ConfigError(f"{key}: must be {op} {hi}, got {value!r}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}; "
                              f"known keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        tp = hints[name]
        dotted = f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, raw.get(name, {}) or {}, dotted + ".")
            continue
        if name not in raw:
            continue
        value = _coerce(dotted, raw[name], tp)
        _check_range(dotted, value, dict(f.metadata))
        kwargs[name] = value
    return cls(**kwargs)


def parse_override(item: str) -> tuple[str, Any]:
    """`train.lr=3e-4` → ('train.lr', 0.0003); the value is parsed as YAML."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected dotted.key=value")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    # '1e-3' stays a string here, as in YAML files; from_dict turns both into numbers.
    return key, yaml.safe_load(text) if text.strip() else ""


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        key, value = parse_override(item)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def from_dict(raw: dict[str, Any]) -> ExperimentConfig:
    cfg = _build(ExperimentConfig, _numbers(raw or {}), "")
    _check_cross_fields(cfg)
    return cfg


def _check_cross_fields(cfg: ExperimentConfig) -> None:
    """Constraints that involve a list or several keys."""
    if not cfg.htl.sparsities:
        raise ConfigError("htl.sparsities: expected at least one sparsity")
    for i, s in enumerate(cfg.htl.sparsities):
        if not 0 < s < 1:
            raise ConfigError(f"htl.sparsities[{i}]: must be in (0, 1), got {s!r}")
        if s in cfg.htl.sparsities[:i]:
            raise ConfigError(f"htl.sparsities[{i}]: {s!r} is listed twice; each pruned copy "
                              "counts once in h, so list each sparsity once")
    if cfg.supervision.setting == "semi":
        if cfg.supervision.label_fraction >= 1.0:
            raise ConfigError("supervision.label_fraction: semi-supervised training needs "
                              "unlabeled images, expected a value < 1, got 1.0")
        if cfg.htl.gt_aware:
            raise ConfigError("htl.gt_aware: needs labels, which unlabeled images do not have; "
                              "in the semi setting HTL is label-free (htl.gt_aware=false)")
    if cfg.supervision.setting == "weak" and cfg.supervision.label_fraction < 1.0:
        raise ConfigError("supervision.label_fraction: the weak setting boxes every image; "
                          "expected 1.0")
    if cfg.htl.lam < 0 and cfg.htl.weighting != "hard":
        raise ConfigError(f"htl.lam: λ < 0 (down-weighting, got {cfg.htl.lam}) needs "
                          f"htl.weighting=hard, got {cfg.htl.weighting}: soft weights "
                          "1 + λ·h/mean(h) would turn negative on the hardest samples")
    if cfg.htl.method == "focal" and cfg.train.loss != "focal_dice":
        cfg.train.loss = "focal_dice"       # the focal comparator is a loss, not a selection


def _numbers(tree: Any) -> Any:
    """YAML 1.1 leaves '1e-3' a string; convert such strings so users need not write 1.0e-3."""
    if isinstance(tree, dict):
        return {k: _numbers(v) for k, v in tree.items()}
    if isinstance(tree, str):
        try:
            return float(tree) if tree.strip().lower().lstrip("+-")[:1].isdigit() and (
                "e" in tree.lower()) else tree
        except ValueError:
            return tree
    return tree


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key repeated in one mapping (YAML would keep the last one
    silently, and a user who wrote it twice meant one of them)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":     # `<<: *anchor`, not a key
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} appears twice in one mapping (lines "
                                  f"{seen[key].start_mark.line + 1} and "
                                  f"{key_node.start_mark.line + 1}); keep one")
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def safe_load_unique(text: str) -> Any:
    """yaml.safe_load, but a repeated key is a ConfigError naming it and its lines."""
    loader = _UniqueKeyLoader(text)           # a SafeLoader: no Python objects from tags
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: str | Path, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{what} not found: {p}")
    try:
        return safe_load_unique(p.read_text())
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: not valid YAML: {first_line(exc)}") from None


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping, or a ConfigError naming the file."""
    raw = _read_yaml(path, what) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def read_yaml_list(path: str | Path, what: str) -> list[str]:
    """A YAML file holding a list of `dotted.key=value` overrides, or a ConfigError."""
    raw = _read_yaml(path, what) or []
    if not isinstance(raw, list) or not all(isinstance(o, str) and "=" in o for o in raw):
        raise ConfigError(f"{path}: expected a list of dotted.key=value overrides")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read YAML (or start from defaults when `path` is None), apply overrides, validate."""
    raw = read_yaml_mapping(path, "config file") if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return from_dict(raw)


def dump_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """The config as YAML, credentials in URIs redacted (this copy is logged to MLflow)."""
    from htl_ray.redact import redact_tree

    Path(path).write_text(yaml.safe_dump(redact_tree(cfg.to_dict()), sort_keys=False))

"""Segmentation model factory: one smp model with a single-logit head.

Models start from `encoder_weights=None` unless the user names weights, so nothing is fetched
from a hub at run time.
"""

from __future__ import annotations

from pathlib import Path

import torch

from htl_ray.config import ConfigError, ModelConfig
from htl_ray.errors import first_line
from htl_ray.run_dir import CHECKPOINT_FILE, RunDir

INIT_KEY = "model.init_checkpoint"


def create_model(cfg: ModelConfig) -> torch.nn.Module:
    """smp.create_model(arch, encoder, weights, in_channels, classes=1) with a clear error."""
    # imported here, not at the top: smp pulls in timm and torchvision (~3 s on 2 busy cores),
    # and every Ray process that unpickles a reference into a module importing this one (the
    # Train controller, the refresh coordinator, a Tune trial) would pay it without a model
    import segmentation_models_pytorch as smp

    extra = {}
    if cfg.decoder_channels:
        extra["decoder_channels"] = tuple(cfg.decoder_channels)
    try:
        return smp.create_model(
            arch=cfg.arch,
            encoder_name=cfg.encoder,
            encoder_weights=cfg.encoder_weights,
            in_channels=cfg.in_channels,
            classes=1,
            **extra,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"model.arch={cfg.arch!r} / model.encoder={cfg.encoder!r}: {exc}") from exc


def check_model_config(cfg: ModelConfig) -> None:
    """model.arch and model.encoder against smp's own lists, then a build of the model on the
    CPU (random weights, nothing downloaded): a misspelt name or a decoder that does not fit the
    encoder fails before Ray starts, naming the key, instead of in every worker."""
    import dataclasses
    import difflib

    import segmentation_models_pytorch as smp

    def unknown(key: str, value: str, known: list[str]) -> ConfigError:
        close = difflib.get_close_matches(value.lower(), known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        return ConfigError(f"{key}: {value!r} is not a segmentation_models_pytorch "
                           f"{key.split('.')[1]}{hint}; expected one of {', '.join(known[:40])}"
                           + (", ..." if len(known) > 40 else "")
                           + (", or tu-<timm model>" if key == "model.encoder" else ""))

    archs = list(smp.MODEL_ARCHITECTURES_MAPPING)
    if cfg.arch.lower() not in archs:
        raise unknown("model.arch", cfg.arch, archs)
    if cfg.encoder.startswith("tu-"):
        import timm

        if not timm.is_model(cfg.encoder[3:]):
            raise ConfigError(f"model.encoder: {cfg.encoder!r}: timm has no model "
                              f"{cfg.encoder[3:]!r}")
    elif cfg.encoder not in smp.encoders.get_encoder_names():
        raise unknown("model.encoder", cfg.encoder, list(smp.encoders.get_encoder_names()))
    try:
        create_model(dataclasses.replace(cfg, encoder_weights=None))
    except Exception as exc:  # noqa: BLE001 - whatever smp refuses is a config error here
        raise ConfigError(f"model: smp cannot build arch={cfg.arch!r} encoder={cfg.encoder!r} "
                          f"in_channels={cfg.in_channels} decoder_channels="
                          f"{cfg.decoder_channels}: {first_line(exc)}") from None


def state_checksum(model: torch.nn.Module | dict[str, torch.Tensor]) -> float:
    """Cheap fingerprint of the weights (sum of |w|) of a model or a state dict, logged to show
    ranks hold identical models."""
    state = model if isinstance(model, dict) else model.state_dict()
    with torch.no_grad():
        return float(sum(p.detach().double().abs().sum() for p in state.values()
                         if torch.is_floating_point(p)))


def initial_checkpoint_file(path: str | Path) -> Path:
    """The file `model.init_checkpoint` stands for: a run directory → its best checkpoint's
    file, a checkpoint directory → its checkpoint.pt, a file → itself. A run pins this file
    when it starts, so its weights do not change if the source run trains on."""
    file = Path(path)
    if file.is_dir() and not (file / CHECKPOINT_FILE).is_file() and RunDir(file).has_state():
        best = RunDir(file).best_checkpoint()
        if best is None:
            raise ConfigError(f"{INIT_KEY}: run directory {file} holds no checkpoint yet")
        file = best[0]
    if file.is_dir():
        file = file / CHECKPOINT_FILE
    if not file.is_file():
        raise ConfigError(f"{INIT_KEY}: no checkpoint at {file}")
    return file.resolve()


def initial_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict `model.init_checkpoint` names: an htl-ray run directory (its best
    checkpoint), checkpoint directory or checkpoint.pt (its `model`, the weights validation
    scored), or a bare state_dict file; loaded tensors-only."""
    file = initial_checkpoint_file(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint"
        raise ConfigError(f"{INIT_KEY}: {file} is not a loadable checkpoint "
                          f"(torch.load weights_only=True: {exc})") from exc
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{INIT_KEY}: {file} holds neither an htl-ray checkpoint nor a "
                          "state_dict (a mapping of parameter names to tensors)")
    # weights saved from a DistributedDataParallel wrapper carry a `module.` prefix
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Copy the weights at `path` into `model`; every parameter and buffer must match in name
    and shape, so a checkpoint of another architecture is an error, not a half-loaded model."""
    state = initial_state(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    misfits = [f"{what} {len(keys)} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})"
               for what, keys in (("missing", missing), ("unexpected", unexpected),
                                  ("other shape", wrong_shape)) if keys]
    if misfits:
        raise ConfigError(
            f"{INIT_KEY}: {path} does not fit this model: {'; '.join(misfits)}. Was it trained "
            "with the same model.arch, model.encoder and model.decoder_channels?")
    model.load_state_dict(state)
    return model

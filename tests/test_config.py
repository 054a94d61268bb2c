import pytest

from htl_ray.config import ConfigError, ExperimentConfig, from_dict, load_config, parse_override


def test_defaults_are_valid_and_flatten_to_dotted_keys():
    cfg = load_config(None)
    assert isinstance(cfg, ExperimentConfig)
    flat = cfg.flat()
    assert flat["train.lr"] == 1e-3
    assert flat["scaling.resources_per_worker.CPU"] == 1.0
    assert flat["model.encoder_weights"] is None


def test_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: 3\n  lr: 1e-3\n"
                 "model:\n  decoder_channels: [64, 32, 16, 8, 4]\n")
    cfg = load_config(p, ["train.epochs=5", "scaling.num_workers=1", "data.augment.hflip=0"])
    assert cfg.train.epochs == 5
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML's "1e-3" string is read as a number
    assert cfg.scaling.num_workers == 1
    assert cfg.data.augment.hflip == 0.0
    assert cfg.model.decoder_channels == [64, 32, 16, 8, 4]


@pytest.mark.parametrize("raw, fragment", [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (did you mean 'train.epochs'?)"),
    ({"trian": {}}, "unknown key 'trian' (did you mean 'train'?)"),
    ({"train": {"epochs": "three"}}, "train.epochs: expected an integer, got str 'three'"),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
    ({"train": {"lr": 0}}, "train.lr: must be > 0"),
    ({"train": {"optimizer": "lion"}}, "train.optimizer: expected one of"),
    ({"data": {"augment": {"hflip": 1.5}}}, "data.augment.hflip: must be <= 1"),
    ({"scaling": {"use_gpu": "yes"}}, "scaling.use_gpu: expected true/false"),
    ({"model": {"decoder_channels": [64, "x"]}}, "model.decoder_channels[1]: expected an integer"),
    ({"train": 5}, "train: expected a mapping"),
])
def test_bad_values_name_the_key(raw, fragment):
    with pytest.raises(ConfigError) as exc:
        from_dict(raw)
    assert fragment in str(exc.value)


@pytest.mark.parametrize("overrides, fragment", [
    (["htl.sparsities=[0.3, 1.0]"], "htl.sparsities[1]: must be in (0, 1), got 1.0"),
    (["htl.sparsities=[0, 0.5]"], "htl.sparsities[0]: must be in (0, 1), got 0"),
    (["htl.sparsities=[]"], "htl.sparsities: expected at least one sparsity"),
    (["htl.q=0"], "htl.q: must be > 0, got 0"),
    (["htl.q=1.5"], "htl.q: must be <= 1, got 1.5"),
    (["htl.lam=-1"], "htl.lam: must be > -1, got -1"),
    (["htl.lam=-0.5", "htl.weighting=soft"], "htl.lam: λ < 0 (down-weighting, got -0.5) "
                                             "needs htl.weighting=hard, got soft"),
    (["htl.beta=1"], "htl.beta: must be < 1, got 1"),
    (["htl.method=grad"], "htl.method: expected one of"),
    (["htl.sparsities=0.5"], "htl.sparsities: expected a list"),
])
def test_htl_values_out_of_range_name_the_key(overrides, fragment):
    """One clear error each, from the config loader alone: before Ray or torch start."""
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    assert fragment in str(exc.value)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="not found"):
        load_config("/nonexistent/cfg.yaml")


@pytest.mark.parametrize("overrides, fragment", [
    (["supervision.setting=semi"], "supervision.label_fraction: semi-supervised training needs"),
    (["supervision.setting=semi", "supervision.label_fraction=0.25", "htl.gt_aware=true"],
     "htl.gt_aware: needs labels"),
    (["supervision.setting=weak", "supervision.label_fraction=0.5"],
     "supervision.label_fraction: the weak setting"),
    (["supervision.setting=boxes"], "supervision.setting: expected one of"),
    (["supervision.label_fraction=0"], "supervision.label_fraction: must be > 0"),
])
def test_supervision_settings_are_checked_before_ray_starts(overrides, fragment):
    with pytest.raises(ConfigError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        load_config(None, overrides)
    ok = load_config(None, ["supervision.setting=semi", "supervision.label_fraction=0.25",
                            "htl.method=htl"])
    # loss and EL2N fit the semi setting: pseudo-labels where an image has no mask
    for method in ("loss", "el2n"):
        assert load_config(None, ["supervision.setting=semi", "supervision.label_fraction=0.25",
                                  f"htl.method={method}"]).htl.method == method
    assert ok.supervision.setting == "semi" and ok.flat()["supervision.label_fraction"] == 0.25


def test_every_shipped_experiment_config_is_valid():
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments"
    configs = [p for p in sorted(folder.glob("*.yaml")) if not p.name.startswith("sweep")]
    assert len(configs) >= 5
    settings = {load_config(p).supervision.setting for p in configs}
    assert settings == {"supervised", "semi", "weak"}


def test_yaml_keys_repeated_are_refused_but_merge_keys_and_safe_tags_behave(tmp_path):
    """A key written twice is ambiguous (YAML keeps the last silently); `<<: *anchor` merges
    are ordinary YAML and load; a Python-object tag still loads nothing."""
    import pytest

    from htl_ray.config import ConfigError, load_config, safe_load_unique

    (tmp_path / "twice.yaml").write_text("train:\n  lr: 0.001\n  lr: 0.01\n")
    with pytest.raises(ConfigError, match=r"twice.yaml: key 'lr' appears twice .*lines 2 and 3"):
        load_config(tmp_path / "twice.yaml")
    (tmp_path / "merge.yaml").write_text(
        "common: &common {epochs: 3, lr: 0.002}\ntrain:\n  <<: *common\n  lr: 0.005\n")
    raw = safe_load_unique((tmp_path / "merge.yaml").read_text())
    assert raw["train"] == {"epochs": 3, "lr": 0.005}
    with pytest.raises(Exception, match="python/object"):
        safe_load_unique("x: !!python/object/apply:os.system ['echo hacked']\n")


def test_named_choices_are_read_from_the_registries_that_implement_them(monkeypatch):
    """A key naming an implementation accepts exactly its registry's names: one added there is
    accepted without retyping it in the config, and an error lists the registry's names."""
    import dataclasses
    import importlib

    from htl_ray.config import ExperimentConfig, RegistryNames, from_dict

    backed = {}
    for section in dataclasses.fields(ExperimentConfig):
        for f in dataclasses.fields(getattr(ExperimentConfig(), section.name)):
            choices = f.metadata.get("choices")
            if choices is not None:
                assert isinstance(choices, RegistryNames), f"{section.name}.{f.name}"
                backed[f"{section.name}.{f.name}"] = choices
    assert {"htl.method", "htl.attention", "htl.weighting", "htl.pruning",
            "supervision.setting", "train.optimizer", "train.scheduler",
            "train.loss"} <= set(backed)
    for key, choices in backed.items():
        registry = getattr(importlib.import_module(choices.module), choices.attribute)
        assert list(choices) == list(registry), key
        section, name = key.split(".")
        default = getattr(getattr(ExperimentConfig(), section), name)
        assert default in registry, f"{key}'s default {default!r} is not in its registry"

    from htl_ray.train import optimization

    with pytest.raises(ConfigError, match=r"train\.optimizer: expected one of \['adamw', "
                                          r"'adam', 'sgd'\], got 'lion'"):
        from_dict({"train": {"optimizer": "lion"}})
    monkeypatch.setitem(optimization.OPTIMIZERS, "lion", optimization.OPTIMIZERS["adam"])
    assert from_dict({"train": {"optimizer": "lion"}}).train.optimizer == "lion"


def test_down_weighting_and_the_uncertainty_comparators_load():
    """λ in (−1, 0) is down-weighting, accepted for any ranking method; tta and entropy are
    methods like the others."""
    for method in ("htl", "random", "loss", "el2n", "tta", "entropy"):
        cfg = load_config(None, [f"htl.method={method}", "htl.lam=-0.5"])
        assert (cfg.htl.method, cfg.htl.lam, cfg.htl.weighting) == (method, -0.5, "hard")

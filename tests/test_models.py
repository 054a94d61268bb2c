import pytest
import torch

from htl_ray.checkpoints import save_checkpoint
from htl_ray.config import ConfigError, ModelConfig
from htl_ray.models import create_model, load_initial_weights, state_checksum


@pytest.mark.parametrize("arch", ["unet", "fpn", "deeplabv3plus"])
def test_factory_builds_single_logit_models(arch):
    model = create_model(ModelConfig(arch=arch, encoder="resnet18"))
    out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)


def test_decoder_channels_and_checksum():
    small = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    big = create_model(ModelConfig())
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    torch.manual_seed(0)
    a = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    torch.manual_seed(0)
    b = create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))
    assert state_checksum(a) == state_checksum(b)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="model.arch='nonet'"):
        create_model(ModelConfig(arch="nonet"))


def _small(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_model(ModelConfig(decoder_channels=[32, 16, 8, 8, 4]))


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_initial_weights_from_a_checkpoint_directory_its_file_or_a_bare_state_dict(tmp_path):
    source = _small(1)
    optimizer = torch.optim.AdamW(source.parameters())
    save_checkpoint(tmp_path / "ckpt", source, optimizer, None, epoch=3, metrics={})
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, tmp_path / "ddp.pt")
    for path in (tmp_path / "ckpt", tmp_path / "ckpt" / "checkpoint.pt", tmp_path / "ddp.pt"):
        model = _small(2)
        assert not _same_weights(model, source)
        load_initial_weights(model, path)
        assert _same_weights(model, source), path


def test_initial_weights_that_do_not_fit_name_the_file_and_the_keys(tmp_path):
    torch.save(create_model(ModelConfig()).state_dict(), tmp_path / "big.pt")
    model = _small(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"model.init_checkpoint: .*big.pt does not fit this "
                                          r"model: other shape \d+ \(decoder"):
        load_initial_weights(model, tmp_path / "big.pt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched
    torch.save(create_model(ModelConfig(encoder="resnet34")).state_dict(), tmp_path / "r34.pt")
    with pytest.raises(ConfigError, match=r"does not fit this model: unexpected \d+ \(encoder."
                                          r"layer1.2.bn1.bias, .*, \.\.\.\)\. Was it trained"):
        load_initial_weights(model, tmp_path / "r34.pt")
    (tmp_path / "notes.pt").write_text("not a checkpoint")
    with pytest.raises(ConfigError, match="notes.pt is not a loadable checkpoint"):
        load_initial_weights(model, tmp_path / "notes.pt")
    torch.save({"lr": 0.1}, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="plain.pt holds neither an htl-ray checkpoint nor"):
        load_initial_weights(model, tmp_path / "plain.pt")
    with pytest.raises(ConfigError, match="model.init_checkpoint: no checkpoint at .*gone"):
        load_initial_weights(model, tmp_path / "gone")


def test_a_run_directory_stands_for_its_best_checkpoint(tmp_path):
    """By the run's own checkpoint metric, not by recency."""
    import json

    run = tmp_path / "run"
    run.mkdir()
    (run / "htl_run.json").write_text(json.dumps(
        {"config": {"train": {"checkpoint_metric": "val/iou"}}}))
    models = {}
    for epoch, iou in ((0, 0.4), (1, 0.7), (2, 0.5)):
        models[epoch] = _small(epoch)
        save_checkpoint(run / f"checkpoint_{epoch}", models[epoch],
                        torch.optim.AdamW(models[epoch].parameters()), None, epoch=epoch,
                        metrics={"val/iou": iou, "val/dice": 1.0 - iou})
    model = load_initial_weights(_small(9), run)
    assert _same_weights(model, models[1])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "htl_run.json").write_text("{}")
    with pytest.raises(ConfigError, match="run directory .*empty holds no checkpoint yet"):
        load_initial_weights(model, tmp_path / "empty")


def test_modules_ray_processes_unpickle_do_not_import_smp_until_a_model_is_built():
    """The Train controller, the refresh coordinator and a Tune trial import these modules
    without building a model: smp (timm, torchvision) would cost each of them seconds."""
    import subprocess
    import sys

    code = ("import sys, htl_ray.train.trainer, htl_ray.htl.coordinator, htl_ray.tune.trial\n"
            "heavy = [m for m in ('segmentation_models_pytorch', 'timm', 'torchvision') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from htl_ray.config import ModelConfig\n"
            "from htl_ray.models import create_model\n"
            "create_model(ModelConfig(decoder_channels=[16, 8, 8, 4, 4]))\n"
            "assert 'segmentation_models_pytorch' in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr

import torch

from htl_ray.checkpoints import load_checkpoint, resume_state, save_checkpoint
from htl_ray.run_dir import CHECKPOINT_FILE, RunDir


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5)
    for epoch in (0, 2, 1):
        save_checkpoint(tmp_path / f"checkpoint_{epoch}", model, opt, sched, epoch=epoch,
                        metrics={"val/dice": 0.1 * epoch})
    assert RunDir(tmp_path).latest_checkpoint() == tmp_path / "checkpoint_2"
    state = load_checkpoint(tmp_path / "checkpoint_2")       # torch.load(weights_only=True)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(state["model"])
    assert torch.equal(fresh.weight, model.weight) and state["epoch"] == 2
    opt2 = torch.optim.AdamW(fresh.parameters())
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def _save(directory, epoch, dice):
    model = torch.nn.Linear(3, 2)
    torch.nn.init.constant_(model.weight, float(epoch))
    opt = torch.optim.AdamW(model.parameters())
    save_checkpoint(directory, model, opt, None, epoch=epoch,
                    metrics={"epoch": epoch, "val/dice": dice})


def test_resume_takes_the_newest_loadable_checkpoint_on_disk_over_the_registered_one(tmp_path):
    run_dir = tmp_path / "run"
    _save(run_dir / "checkpoint_a", 0, 0.5)
    _save(run_dir / "checkpoint_b", 1, 0.7)     # written, but the worker died before the
    #                                             controller registered it
    directory, state = resume_state(run_dir / "checkpoint_a", run_dir)
    assert directory == run_dir / "checkpoint_b" and state["epoch"] == 1
    assert torch.all(state["model"]["weight"] == 1.0)

    _save(run_dir / "checkpoint_c", 2, 0.6)
    (run_dir / "checkpoint_c" / CHECKPOINT_FILE).write_bytes(b"cut short")   # half-copied
    (run_dir / "checkpoint_d").mkdir()                       # a copy that never got its files
    (run_dir / "checkpoint_d" / "meta.json").write_text("{")
    directory, state = resume_state(run_dir / "checkpoint_a", run_dir)
    assert directory == run_dir / "checkpoint_b" and state["epoch"] == 1

    # the registered one is used when nothing on disk is newer, or the run dir is not visible
    directory, state = resume_state(run_dir / "checkpoint_b", run_dir)
    assert directory == run_dir / "checkpoint_b"
    directory, state = resume_state(run_dir / "checkpoint_a", tmp_path / "elsewhere")
    assert directory == run_dir / "checkpoint_a" and state["epoch"] == 0
    assert resume_state(None, tmp_path / "elsewhere") is None
    # a fresh run (empty run dir, nothing registered) starts from scratch
    assert resume_state(None, tmp_path) is None

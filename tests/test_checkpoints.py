import torch

from htl_ray.train.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(4, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 5)
    for epoch in (0, 2, 1):
        save_checkpoint(tmp_path / f"checkpoint_{epoch}", model, opt, sched, epoch,
                        {"val/dice": 0.1 * epoch})
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_2"
    state = load_checkpoint(tmp_path / "checkpoint_2")       # torch.load(weights_only=True)
    fresh = torch.nn.Linear(3, 2)
    fresh.load_state_dict(state["model"])
    assert torch.equal(fresh.weight, model.weight) and state["epoch"] == 2
    opt2 = torch.optim.AdamW(fresh.parameters())
    opt2.load_state_dict(state["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]

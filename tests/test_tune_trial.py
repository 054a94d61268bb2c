"""Trial naming (the trial itself runs in tests/test_tune_sweep.py)."""

from htl_ray.tune.trial import trial_name


def test_trial_names_are_readable():
    assert trial_name("41a87fac", {"htl.lam": 2.4208, "train.lr": 0.00312,
                                   "htl.attention": "reweight", "htl.sparsities": [0.3, 0.6]}) \
        == "41a87fac attention=reweight lam=2.42 sparsities=[0.3,0.6] lr=0.00312"

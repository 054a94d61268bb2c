"""A refresh coordinator built in-process over a score table, for the tests of attention (what
a table turns into) and of the coordinator (versions, EMA, population)."""

import numpy as np
import pandas as pd

from htl_ray.htl.coordinator import RefreshCoordinator
from htl_ray.htl.scorer import ScoringSpec

N = 20


def score_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"s{i:02d}" for i in range(N)], "h": rng.random(N),
                         "h_gt": rng.random(N), "loss": rng.random(N), "el2n": rng.random(N),
                         "tta": rng.random(N), "entropy": rng.random(N)})


def coordinator(tmp_path, method, **htl) -> RefreshCoordinator:
    cfg = {"method": method, "lam": 2.0, "q": 0.25, "tau": None, "weighting": "hard",
           "beta": 0.5, "gt_aware": False, "population": 1, **htl}
    return RefreshCoordinator(str(tmp_path), None, ScoringSpec(model={}), cfg, seed=0)

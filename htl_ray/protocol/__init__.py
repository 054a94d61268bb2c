"""`htl-ray reproduce`: the paper's comparison on real data, resumable across sittings.

A protocol is a list of sweep files, one per supervision setting. For each setting the HTL
sweep runs (its trials see only the train and val splits), then its confirmation runs: the best
HTL configuration and the same configuration with each comparator's `htl.method` (ERM, the
random placebo, loss, EL2N), N seeds each, every one scored once on the test split; once every
setting has them, each setting's ablations (`htl_ray.tune.ablation`, val only). Everything
already FINISHED in MLflow is skipped, so the protocol can be stopped (Ctrl-C) and continued by
running the same command again. After every setting, the results section of the results page
is regenerated from MLflow: what an interrupted protocol has is documented, with what is
missing said as such.

A thin front over its modules:
- `runner`: `run_protocol`, the sweeps and their follow-up runs across settings and seeds;
- `status`: what MLflow holds of each setting (`setting_status`), and the runs the page reads;
- `page`: the results page rendered from the status and spliced between its marks;
- `report_cache`: the chosen configuration's HTL report, built once and reused.
The statistics (means with CIs, paired differences, the verdict) are `htl_ray.analysis.stats`.
"""

from __future__ import annotations

from htl_ray.protocol.runner import run_protocol

__all__ = ["run_protocol"]

"""Every MLflow tag and role htl-ray writes or reads: the schema of MLflow used as the
project's shared database. Tag names live here only; modules import them.

No MLflow import: Ray workers and the CLI parser import this cheaply.
"""

from __future__ import annotations

# ---- every run
GIT_COMMIT_TAG = "htl.git_commit"                 # the code a run started with
RESUMED_COMMIT_PREFIX = "htl.git_commit.resumed."  # + unix time: the code a resume ran
DATASET_TAG = "htl.dataset_fingerprint"
RUN_DIR_TAG = "htl.run_dir"
SETTING_TAG = "htl.setting"                       # supervised / semi / weak
METHOD_TAG = "htl.method"                         # erm / htl / random / loss / el2n / focal
INIT_CHECKPOINT_TAG = "htl.init_checkpoint_file"  # model.init_checkpoint, pinned to a file
VERSION_TAG_PREFIX = "htl.version."               # + package: its version
BEST_CHECKPOINT_TAG = "htl.best_checkpoint"
BEST_EPOCH_TAG = "htl.best_epoch"
EXTERNAL_TAG_PREFIX = "htl.external."             # + site + .dataset/.split/.fingerprint
PARENT_TAG = "mlflow.parentRunId"                 # MLflow's own: a sweep's child runs

# ---- sweeps: roles of runs, and how a trial run ended
SWEEP_TAG = "htl.sweep"
ROLE_TAG = "htl.role"
SWEEP_ROLE = "sweep"              # the parent run
TRIAL_ROLE = "trial"              # a Tune trial
CONFIRM_ROLE = "confirm"          # the chosen config and its comparators over seeds
ABLATION_ROLE = "ablation"        # variants of the chosen config, scored on val only
TRIAL_TAG = "htl.trial_id"
GROUP_TAG = "htl.group"           # a confirmation run's method group
RESUMED_AT_TAG = "htl.resumed_at"
BEST_TRIAL_TAG = "htl.best_trial"
BEST_TRIAL_ID_TAG = "htl.best_trial_id"
# why a trial run ended KILLED (htl_ray.tune.trial_runs sets them; the results page reads them)
STOPPED_EARLY_TAG = "htl.stopped_early"
INTERRUPTED_TAG = "htl.interrupted"
ORPHANED_TAG = "htl.orphaned"
# on a trial run that failed elsewhere and that a continued search runs again (prior_trials)
RETRIED_TAG = "htl.retried"
# on a run imported from the protocol archive (htl_ray.archive): the run id it was trained as
ORIGIN_TAG = "htl.archive.origin_run_id"
SAMPLED_TAG_PREFIX = "htl.sampled."   # + space key: the trial's sampled value, as JSON

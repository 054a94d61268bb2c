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
# on a confirmation run copied from another sweep that trained the same configuration
# (htl_ray.tune.reuse): that run's id (its archive origin)
REUSED_TAG = "htl.reused_from"
REUSED_SWEEP_TAG = "htl.reused_from_sweep"
SAMPLED_TAG_PREFIX = "htl.sampled."   # + space key: the trial's sampled value, as JSON

# ---- what each name means: the documentation's reference (docs: MLflow names) is generated
# from these three tables, and its test checks that every tag and role above is in them.
TAG_MEANINGS = {
    GIT_COMMIT_TAG: "the git commit of the code a run started with",
    RESUMED_COMMIT_PREFIX: "+ unix time: the git commit of the code a `--resume` ran with",
    DATASET_TAG: "the fingerprint of the run's dataset (its manifest.json): two runs with the "
                 "same one trained on the same pixels, labels, metadata and split",
    RUN_DIR_TAG: "the run directory (checkpoints, HTL tables, the MLflow outbox)",
    SETTING_TAG: "the supervision setting: supervised, semi or weak",
    METHOD_TAG: "the attention method: erm, htl, random, loss, el2n, tta, entropy or focal",
    INIT_CHECKPOINT_TAG: "the checkpoint file the run's initial weights were read from "
                         "(model.init_checkpoint resolved to a file)",
    VERSION_TAG_PREFIX: "+ package name: the version of that package the run used",
    BEST_CHECKPOINT_TAG: "the checkpoint directory of the best epoch (by "
                         "train.checkpoint_metric), set when the run finishes",
    BEST_EPOCH_TAG: "the best epoch (0-based), or 'none'",
    EXTERNAL_TAG_PREFIX: "+ <site>.dataset / .split / .fingerprint: the dataset, split and "
                         "fingerprint an external validation (`htl-ray evaluate --data`) "
                         "scored the run on",
    PARENT_TAG: "MLflow's own: the parent run of a sweep's child runs",
    SWEEP_TAG: "the sweep (sweep.name) a parent, trial, confirmation or ablation run belongs to",
    ROLE_TAG: "what a sweep's run is: one of the roles below",
    TRIAL_TAG: "the Ray Tune trial id of a trial run (of a confirmation run: the chosen "
               "trial's)",
    GROUP_TAG: "a confirmation or ablation run's group: best, a comparator method, or the "
               "ablation variant",
    RESUMED_AT_TAG: "on a sweep's parent run: when the sweep was last resumed",
    BEST_TRIAL_TAG: "on a sweep's parent run: the name of the best trial",
    BEST_TRIAL_ID_TAG: "on a sweep's parent run: the Tune trial id of the best trial",
    STOPPED_EARLY_TAG: "a trial run ASHA stopped early (the run ended KILLED, metrics kept)",
    INTERRUPTED_TAG: "a run cut short by Ctrl-C or SIGTERM (ended KILLED; `--resume` "
                     "continues it)",
    ORPHANED_TAG: "a trial run whose driver died before Tune recorded it (closed KILLED at "
                  "the resume; its suggestion runs again as a new trial)",
    RETRIED_TAG: "a trial run that failed elsewhere and that a continued search ran again: "
                 "it no longer counts as a trial",
    ORIGIN_TAG: "on a run imported from the protocol archive: the run id it was trained as",
    REUSED_TAG: "on a confirmation run another sweep trained with the same configuration and "
                "seed (a later round's `reuse:`): the id that run was trained as",
    REUSED_SWEEP_TAG: "on such a reused run: the sweep that trained it",
    SAMPLED_TAG_PREFIX: "+ search-space key: the value the search sampled for a trial, as "
                        "JSON",
}
ROLE_MEANINGS = {
    SWEEP_ROLE: "a sweep's parent run: search settings and space as params, the best trial "
                "and its config when done",
    TRIAL_ROLE: "one trial of the search, scored on val only",
    CONFIRM_ROLE: "the chosen configuration or one of its comparators, per seed, scored on "
                  "the test split",
    ABLATION_ROLE: "a variant of the chosen configuration (the sweep file's ablations), "
                   "scored on val only",
}
# Metric names (placeholders in <>), in the order a run logs them: per epoch (step = epoch),
# per HTL refresh (step = version), at the end of a run or evaluation (step 0).
METRICS = {
    "train/loss": "the epoch's mean training loss over all ranks, as minimised (attention "
                  "weights applied)",
    "train/samples": "training samples seen in the epoch, all ranks (oversampling included)",
    "lr": "the learning rate of the epoch",
    "time/epoch_s": "wall time of the epoch, validation included",
    "time/train_epoch_s": "wall time of the epoch's training pass",
    "time/data_wait_s": "rank 0's time blocked on the Ray Data iterator",
    "time/data_prep_s": "rank 0's time for attention sampling, augmentation, device placement",
    "weights_checksum": "sum of |w| of the model after the epoch (rank 0)",
    "weights_checksum_max_abs_diff": "spread of that sum across ranks (0: the ranks agree)",
    "val/<metric>": "the validation split's mean of <metric> over images, every rank's share "
                    "gathered",
    "val/group/<attribute>/<group>/dice": "validation Dice of one group",
    "val/worst_group/<attribute>/dice": "the lowest group Dice of an attribute (the unknown "
                                        "group left out)",
    "val/best_<name>": "the best value so far of train.checkpoint_metric (<name> its last part)",
    "htl/version_in_use": "the HTL score version the epoch trained with",
    "htl/wait_s": "how long training waited for the refresh coordinator",
    "htl/attention_active": "1 when the epoch trained with HTL attention weights, else 0",
    "htl/weights_checksum": "checksum of the HTL weights in use (rank 0)",
    "htl/weights_checksum_max_abs_diff": "its spread across ranks (0: every rank used the "
                                         "same weights)",
    "htl/attended_samples": "training samples of the attended set seen in the epoch (weight "
                            "> 1; down-weighted, λ < 0: weight < 1), all ranks",
    "htl/version": "per refresh: the version number of the score table",
    "htl/set_size": "per refresh: samples in the HTL (attended) set",
    "htl/jaccard_prev": "per refresh: overlap (Jaccard) of the HTL set with the previous one",
    "htl/h_q10": "per refresh: 10th percentile of the (smoothed) score h",
    "htl/h_q50": "per refresh: median of h",
    "htl/h_q90": "per refresh: 90th percentile of h",
    "htl/refresh_wall_s": "per refresh: wall time of the scoring",
    "htl/measured_sparsity/<target>": "per refresh: the measured sparsity of the copy pruned "
                                      "to <target>",
    "best/val/<...>": "at the end of a run: every val/ metric of the best epoch",
    "best/test/<metric>": "at the end of a run (train.evaluate_test) or by `htl-ray evaluate`: "
                          "the best checkpoint on the test split, at the training resolution; "
                          "also best/test/group/..., best/test/worst_group/<attribute>/dice",
    "best/test/original/<metric>": "the same at each image's original resolution (what the "
                                   "ISIC challenge scores)",
    "best/<split>/<...>": "`htl-ray evaluate --split val|train`: the same for that split",
    "external/<name>/<metric>": "`htl-ray evaluate --data DATASET --name <name>`: the best "
                                "checkpoint on another dataset; also .../original/<metric>, "
                                ".../group/..., .../worst_group/<attribute>/dice",
    "sweep/trials": "on a sweep's parent run: trials recorded",
    "sweep/finished": "on a sweep's parent run: trials that finished",
    "best/<sweep metric>": "on a sweep's parent run: the best trial's value of sweep.metric",
}

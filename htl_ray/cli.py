"""`htl-ray`: hard-to-learn samples, segmentation training, prediction and comparison on Ray.

Commands: data ingest/synth, train, sync, evaluate, predict, register, score, tune, reproduce,
compare, paired, report, demo.

Errors a user can fix (a bad config key, data folder, path, option or server address) are
printed as one `error:` line and exit with status 2; anything else is a bug in htl-ray and
keeps its traceback, with a pointer to report it (exit 1).
"""

from __future__ import annotations

import argparse
import sys

from htl_ray.config import HtlConfig, RegistryNames, load_config
from htl_ray.console import show_progress
from htl_ray.errors import (
    REPORT_TO,
    UserError,
    describe_os_error,
    find_user_error,
    first_line,
)
from htl_ray.interrupts import handle_sigterm_as_interrupt
from htl_ray.tracking.schema import (
    ABLATION_ROLE,
    CONFIRM_ROLE,
    TRIAL_ROLE,
)


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected three numbers like 0.7,0.15,0.15") from None
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three numbers (train,val,test)")
    return parts  # type: ignore[return-value]


# ingest options that only some layouts read: given to another, they would be ignored silently
LAYOUT_OPTIONS = {"--metadata": "metadata", "--diagnosis": "diagnosis",
                  "--mask-pattern": "mask_pattern", "--column-map": "column_map"}
LAYOUT_OPTIONS_APPLY = {"--metadata": ("isic", "folder"), "--diagnosis": ("isic",),
                        "--mask-pattern": ("folder",), "--column-map": ("folder",)}


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 1")
    return value


def _cmd_ingest(args: argparse.Namespace) -> int:
    from htl_ray.data.ingest import ingest
    from htl_ray.data.layouts import LAYOUTS, FolderLayout, IsicLayout, parse_column_map

    factories = {
        "isic": lambda: IsicLayout(args.metadata, args.diagnosis),
        "ph2": lambda: LAYOUTS["ph2"](),
        "folder": lambda: FolderLayout(args.mask_pattern or "{id}.png", args.metadata,
                                       parse_column_map(args.column_map)),
    }
    for option, value in LAYOUT_OPTIONS.items():
        layouts = LAYOUT_OPTIONS_APPLY[option]
        if getattr(args, value) is not None and args.layout not in layouts:
            raise UserError(f"{option}: applies to --layout {' or '.join(layouts)}, not "
                            f"{args.layout}; remove it or choose the layout it belongs to")
    from htl_ray.data.selection import parse_selection

    selections = [*(parse_selection(t, keep=True) for t in args.keep or ()),
                  *(parse_selection(t, keep=False) for t in args.drop or ())]
    ingest(factories[args.layout](), args.src, args.out, size=args.size,
           fractions=args.fractions, seed=args.seed, allow_empty_masks=args.allow_empty_masks,
           selections=selections)
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from htl_ray.data.synth import synthesize

    synthesize(args.out, n=args.n, size=args.size, seed=args.seed, fractions=args.fractions)
    return 0


def _print_outcome(outcome) -> None:
    m = outcome.best_metrics or outcome.metrics
    nan = float("nan")
    print("\n=== htl-ray: training finished ===")
    print(f"best epoch {int(m.get('epoch', -1)) + 1}: val dice {m.get('val/dice', nan):.4f}"
          f"  iou {m.get('val/iou', nan):.4f}"
          f"  thresholded jaccard {m.get('val/thresholded_jaccard', nan):.4f}"
          f"  sensitivity {m.get('val/sensitivity', nan):.4f}"
          f"  specificity {m.get('val/specificity', nan):.4f}")
    worst = {k.split("/")[2]: v for k, v in m.items() if k.startswith("val/worst_group/")}
    if worst:
        print("worst-group dice: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(worst.items())))
    t = outcome.test_metrics
    if t:
        print(f"test split, best checkpoint: dice {t['test/dice']:.4f}  iou {t['test/iou']:.4f}"
              f"  thresholded jaccard {t['test/thresholded_jaccard']:.4f}")
    print(f"run directory:   {outcome.run_dir}")
    print(f"best checkpoint: {outcome.best_checkpoint}")
    from htl_ray.tracking import redact

    print(f"MLflow run:      {outcome.mlflow_run_id} in {redact(outcome.tracking_uri)}")
    if outcome.tracking_pending:
        print(f"MLflow pending:  {outcome.tracking_pending} write(s) kept in "
              f"{outcome.run_dir}/mlflow_outbox; send them with: htl-ray sync {outcome.run_dir}")
    _print_ui_hint(outcome.tracking_uri)


def _cmd_train(args: argparse.Namespace) -> int:
    if args.resume:
        from htl_ray.train.trainer import config_for_resume

        cfg = config_for_resume(args.resume, args.overrides)
    else:
        # config and dataset errors first: they need neither torch nor Ray (a second, not ten)
        from htl_ray.train.preflight import preflight

        cfg = load_config(args.config, args.overrides)
        preflight(cfg)
    from htl_ray.train.trainer import run_training

    outcome = run_training(cfg, resume=bool(args.resume))
    _print_outcome(outcome)
    return 0


def _cmd_sync(args: argparse.Namespace) -> int:
    from htl_ray.run_dir import RunDir
    from htl_ray.tracking import redact
    from htl_ray.tracking.outbox import flush_run

    uri, run_id = RunDir(args.run).mlflow_run()
    uri = args.tracking_uri or uri
    left = flush_run(args.run, uri, run_id)    # one short probe when the server is down
    if left:
        print(f"MLflow {redact(uri)} did not take everything: still pending "
              + ", ".join(f"{n} from {w}" for w, n in left.items())
              + f" in {RunDir(args.run).outbox_dir}; run this again when it answers")
        return 1
    from htl_ray.tracking import check_reachable
    from htl_ray.tracking import client as tracking_client
    try:
        check_reachable(uri, timeout_s=3.0, key="--tracking-uri")
    except UserError:
        print(f"nothing of {args.run} is pending; MLflow {redact(uri)} does not answer now, so "
              "the run's status was not read")
        return 0
    status = tracking_client(uri).get_run(run_id).info.status
    print(f"MLflow run {run_id} in {redact(uri)} holds every write of {args.run} "
          f"(status {status})")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from htl_ray.train.trainer import evaluate_run

    evaluate_run(args.run, args.split, data=args.data, name=args.name)
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from htl_ray.cluster import init_ray
    from htl_ray.htl.offline import score_checkpoint

    table, summary, dest = score_checkpoint(
        args.checkpoint, args.data, split=args.split, sparsities=args.sparsities,
        pruning=args.pruning, actors=args.actors, batch_size=args.batch_size, out=args.out,
        labels=not args.no_labels, start_ray=init_ray)
    print(f"scored {summary['n']} images of split '{args.split}' with the checkpoint of epoch "
          f"{summary['epoch']}: mean h {summary['mean_h']:.4f}")
    print("measured sparsity: " + ", ".join(
        f"target {t:.2f} → {m:.4f}" for t, m in sorted(summary["measured_sparsity"].items())))
    if "failure_auroc" in summary:
        rate, auc = summary["failure_rate"], summary["failure_auroc"]
        verdict = (f"AUROC of h for failure = {auc:.3f}" if auc == auc else
                   f"AUROC undefined: {'every' if rate == 1 else 'no'} image fails")
        print(f"failure detector: {rate:.1%} of images fail (IoU < 0.65); {verdict}")
        aucs = summary.get("risk_auroc", {})
        if aucs and auc == auc:
            print("AUROC for failure of each quality-control risk: " + ", ".join(
                f"{k} {v:.3f}" for k, v in sorted(aucs.items(), key=lambda kv: -kv[1])))
    print(f"score table: {dest}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from htl_ray.predict import predict

    outcome = predict(args.model, args.input, args.out, split=args.split, risk=args.risk,
                      review_threshold=args.review_threshold, probabilities=args.probabilities,
                      actors=args.actors, cpus_per_actor=args.cpus_per_actor,
                      gpus_per_actor=args.gpus_per_actor, batch_size=args.batch_size,
                      tracking_uri=args.tracking_uri)
    out = outcome.out_dir
    print("\n=== htl-ray: predictions written ===")
    print(f"masks:  {out}/<id>_segmentation.png ({len(outcome.table)} images, each at its own "
          "size)")
    print(f"table:  {out / 'predictions.parquet'} and predictions.csv ({outcome.review} "
          "flagged for review: column 'review')")
    print(f"report: {out / 'report.json'} ({len(outcome.unreadable)} unreadable, "
          f"{len(outcome.passed_over)} passed over)")
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from htl_ray.train.model_bundle import register_run

    name, version = register_run(args.run, args.name, tracking_uri=args.tracking_uri)
    print(f"load it anywhere: mlflow.pyfunc.load_model('models:/{name}/{version}'), or "
          f"htl-ray predict models:/{name}/{version} IMAGES --out DIR")
    return 0


def _sparsities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected numbers like 0.3,0.5,0.7") from None
    if not values or not all(0 < v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: every sparsity must be in (0, 1)")
    return values


def _cmd_tune(args: argparse.Namespace) -> int:
    from htl_ray.tune import load_sweep, run_sweep

    sweep = load_sweep(args.sweep, args.overrides)
    outcome = run_sweep(sweep, resume=args.resume, confirm=args.confirm, ablate=args.ablate)
    print("\n=== htl-ray: sweep " + ("interrupted (resume it with --resume) ==="
                                     if outcome.interrupted else "finished ==="))
    if outcome.best is not None:
        b = outcome.best
        print(f"best trial {b.name}: {sweep.settings.metric} "
              f"{b.value(sweep.settings.mode):.4f}")
    print(f"sweep directory: {outcome.directory}")
    print(f"summary:         {outcome.directory / 'summary' / 'study_summary.md'}")
    print(f"best config:     {outcome.directory / 'summary' / 'best_config.yaml'}")
    from htl_ray.tracking import redact

    print(f"MLflow parent run {outcome.parent_run_id} in {redact(outcome.tracking_uri)}")
    if outcome.confirm_run_ids:
        print(f"confirmation runs: {sum(map(len, outcome.confirm_run_ids.values()))}; compare "
              f"them: htl-ray compare {sweep.base.tracking.experiment} --sweep "
              f"{sweep.settings.name} --role confirm")
    if outcome.ablation_run_ids:
        print(f"ablation runs:     {sum(map(len, outcome.ablation_run_ids.values()))} (val "
              f"only); compare them: htl-ray compare {sweep.base.tracking.experiment} --sweep "
              f"{sweep.settings.name} --role ablation")
    _print_ui_hint(outcome.tracking_uri)
    return 0


def _print_ui_hint(uri: str) -> None:
    from htl_ray.tracking import sqlite_path

    db = sqlite_path(uri)
    store = f"sqlite:///{db}" if db else uri
    print(f"open the MLflow UI: mlflow ui --backend-store-uri {store} --host 127.0.0.1 "
          "--port 5000   (then browse http://127.0.0.1:5000)")


def _block_name(text: str) -> str:
    from htl_ray.tune.space import ABLATION_NAME  # the same rule as a sweep's names

    if not ABLATION_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: expected lower-case letters, digits and "
                                         "dashes (it names the page's marks)")
    return text


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from htl_ray.protocol import run_protocol

    overrides = list(args.overrides)
    if args.set_from:
        from htl_ray.config import read_yaml_list

        overrides = [*read_yaml_list(args.set_from, "--set-from"), *overrides]
    complete = run_protocol(args.sweeps, seeds=args.seeds, results=args.results,
                            report_only=args.report_only, overrides=overrides,
                            archive=args.archive, ablate=not args.no_ablations,
                            block=args.block, externals=args.external)
    print(f"\n=== htl-ray: reproduction protocol {'complete' if complete else 'in progress'}"
          f" ===\nresults: {args.results}"
          + ("" if complete else "\nrun the same command again to continue (finished runs "
                                  "are skipped)"))
    return 0


def _paired_split(text: str) -> str:
    if text in ("test", "val") or (text.startswith("external/") and len(text) > 9):
        return text
    raise argparse.ArgumentTypeError(f"{text!r}: expected test, val or external/<name>")


def _cmd_paired(args: argparse.Namespace) -> int:
    from htl_ray.compare import paired_images, run_per_image
    from htl_ray.tables import markdown_table

    table = paired_images(run_per_image(args.run_a, args.split),
                          run_per_image(args.run_b, args.split), n_boot=args.boot, seed=args.seed)
    print(f"{args.split} split, best checkpoint of each run; a = {args.run_a}, b = {args.run_b};"
          f" diff = a − b per image, bootstrap 95% CI over images ({args.boot} resamples, "
          f"seed {args.seed})\n")
    print(markdown_table(table, ".4f"))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from htl_ray.compare import compare, load_runs, write_comparison
    from htl_ray.config import parse_override
    from htl_ray.tracking import (
        absolute_uri,
        check_reachable,
        redact,
        resolve_tracking_uri,
        uri_key,
    )
    from htl_ray.tracking.queries import RunQuery

    # an explicit --tracking-uri wins over MLFLOW_TRACKING_URI (as in predict and register)
    uri = absolute_uri(args.tracking_uri) if args.tracking_uri else resolve_tracking_uri()
    check_reachable(uri, existing=True, key=uri_key(args.tracking_uri))   # seconds, not minutes
    runs = load_runs(uri, args.experiment, args.filter or "",
                     query=RunQuery(sweep=args.sweep, role=args.role))
    baseline = ({k: str(v) for k, v in map(parse_override, args.baseline)}
                if args.baseline else None)
    result = compare(runs, split=args.split, baseline=baseline)
    print(f"{len(runs)} finished runs of experiment {args.experiment!r} in {redact(uri)}, "
          f"{len(result.table)} configurations; {args.split} metrics (best epoch), mean "
          "[95% CI] over seeds; Δ = paired difference to the baseline (same seed)\n")
    print(result.markdown())
    write_comparison(result, Path(args.out or Path("compare") / args.experiment))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from htl_ray.report import build_report

    report = build_report(args.run, args.baseline, args.out, top=args.top)
    print("\n=== htl-ray: report written ===")
    print(f"HTML:     {report.html_path}")
    print(f"Markdown: {report.markdown_path}")
    print(report.markdown_path.read_text().split("## Groups")[0].strip())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from htl_ray.demo import run_demo

    outcome = run_demo(args.overrides)
    _print_outcome(outcome.training)
    print("\n=== htl-ray: demo finished: where to look ===")
    found = outcome.planted_found
    print("HTL report:      " + str(outcome.report.html_path) + "  (and report.md beside it)")
    print("  " + ("it found the planted hard group(s) enriched among HTL samples: "
                  + ", ".join(found) if found else
                  "it did not find a planted hard group significantly enriched among the HTL "
                  "samples in this short run (train longer: htl-ray demo train.epochs=12)"))
    p = outcome.predictions
    print(f"predictions:     {p.out_dir}  (masks <id>_segmentation.png, predictions.csv; "
          f"{p.review} of {len(p.table)} test images flagged for review by the "
          "quality-control risk)")
    _print_ui_hint(outcome.training.tracking_uri)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="htl-ray", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="create datasets").add_subparsers(dest="data_command",
                                                                         required=True)
    ing = data.add_parser("ingest", help="ingest an ISIC / PH2 / images+masks folder to Parquet")
    ing.add_argument("src", help="source folder")
    ing.add_argument("--layout", required=True,
                     choices=RegistryNames("htl_ray.data.layouts", "LAYOUTS"),
                     help="how SRC is organised: isic (the challenge's folders and CSVs), ph2 "
                          "(the PH2 release), folder (images + masks by --mask-pattern)")
    ing.add_argument("--out", required=True, help="output dataset folder")
    ing.add_argument("--size", type=int, default=256, help="training resolution (size×size)")
    ing.add_argument("--fractions", type=_fractions, default=(0.7, 0.15, 0.15),
                     help="train,val,test fractions (default 0.7,0.15,0.15)")
    ing.add_argument("--all-test", action="store_const", const=(0.0, 0.0, 1.0),
                     dest="fractions", help="every image in the test split (a test-only "
                     "dataset for external validation; same as --fractions 0,0,1)")
    ing.add_argument("--seed", type=int, default=0, help="split seed")
    ing.add_argument("--metadata", help="metadata CSV (isic: found in SRC if omitted)")
    ing.add_argument("--diagnosis", help="isic: one-hot diagnosis CSV (found in SRC if omitted)")
    ing.add_argument("--mask-pattern", help="folder: mask file name pattern (default {id}.png)")
    ing.add_argument("--column-map", help="folder: id=col,age=col,sex=col,site=col,"
                     "lesion_id=col,diagnosis=col")
    ing.add_argument("--allow-empty-masks", action="store_true",
                     help="keep images whose mask is empty (default: quarantine them)")
    ing.add_argument("--keep", action="append", metavar="KEY=PATTERN",
                     help="ingest only the images whose metadata KEY (id, age, sex, site, "
                     "lesion_id, diagnosis) matches the shell PATTERN, e.g. lesion_id=MSK4_* "
                     "(repeatable: every --keep must match)")
    ing.add_argument("--drop", action="append", metavar="KEY=PATTERN",
                     help="leave out the images whose metadata KEY matches PATTERN, e.g. "
                     "lesion_id=MSK4_* to hold that collection out (repeatable)")
    ing.set_defaults(func=_cmd_ingest)

    syn = data.add_parser("synth", help="generate the synthetic dataset with planted hard groups")
    syn.add_argument("--out", required=True, help="output dataset folder")
    syn.add_argument("--n", type=_positive_int, default=400, help="images to generate")
    syn.add_argument("--size", type=int, default=64, help="image side in pixels (size×size)")
    syn.add_argument("--seed", type=int, default=0,
                     help="seed of the images, their metadata and the split")
    syn.add_argument("--fractions", type=_fractions, default=(0.7, 0.15, 0.15),
                     help="train,val,test shares")
    syn.set_defaults(func=_cmd_synth)

    tr = sub.add_parser("train", help="train a segmentation model with Ray Train")
    tr.add_argument("config", nargs="?", help="experiment YAML (defaults if omitted)")
    tr.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    tr.set_defaults(func=_cmd_train)

    sy = sub.add_parser("sync", help="send a run's MLflow writes kept back during a tracking "
                        "outage (metrics, artifacts, the end of the run)")
    sy.add_argument("run", help="run directory (as printed by `htl-ray train`)")
    sy.add_argument("--tracking-uri", help="send them here instead of the run's own URI "
                    "(the server moved)")
    sy.set_defaults(func=_cmd_sync)

    ev = sub.add_parser("evaluate", help="a finished run's best checkpoint on the test split "
                        "(or another), logged to its MLflow run as best/<split>/* metrics; "
                        "with --data, on another dataset (external validation), logged as "
                        "external/<name>/*; at training and at original resolution")
    ev.add_argument("run", help="run directory (as printed by `htl-ray train`)")
    ev.add_argument("--split", default="test", choices=["test", "val", "train"],
                    help="split of the run's dataset (or of --data) to score")
    ev.add_argument("--data", help="another ingested dataset (e.g. another site's images, "
                    "ingested with --fractions 0,0,1)")
    ev.add_argument("--name", help="site name for --data (default: the dataset folder's name)")
    ev.set_defaults(func=_cmd_evaluate)

    sc = sub.add_parser("score", help="HTL scores and quality-control signals of a saved "
                        "model on a dataset split, and the AUROC of each as a label-free "
                        "failure detector")
    sc.add_argument("checkpoint", help="checkpoint directory (or its checkpoint.pt)")
    sc.add_argument("data", help="dataset folder")
    sc.add_argument("--split", default="val", choices=["train", "val", "test"],
                    help="split of DATA to score")
    htl = HtlConfig()               # the defaults of htl.sparsities, htl.pruning, ...
    sc.add_argument("--sparsities", type=_sparsities, default=tuple(htl.sparsities),
                    help="default: htl.sparsities' default")
    sc.add_argument("--pruning", default=htl.pruning,
                    choices=HtlConfig.__dataclass_fields__["pruning"].metadata["choices"],
                    help="how the pruned copies are made (as htl.pruning)")
    sc.add_argument("--actors", type=_positive_int, default=1, help="scorer actors")
    sc.add_argument("--batch-size", type=_positive_int, default=htl.scorer_batch_size,
                    help="images per scoring batch (as htl.scorer_batch_size)")
    sc.add_argument("--no-labels", action="store_true", help="score without ground truth")
    sc.add_argument("--out", help="output Parquet (default: beside the checkpoint)")
    sc.set_defaults(func=_cmd_score)

    from htl_ray.quality import DEFAULT_RISK, RISKS

    pr = sub.add_parser("predict", help="masks for new images at their original size, with a "
                        "quality-control risk per image and a table (no masks needed)")
    pr.add_argument("model", help="a run directory (its best checkpoint), a checkpoint "
                    "directory, or an MLflow Model URI: runs:/<run id>/model, "
                    "models:/<name>/<version>")
    pr.add_argument("input", help="a folder of images (searched recursively), or an ingested "
                    "dataset with --split")
    pr.add_argument("--out", required=True, help="output folder (a re-run skips the images "
                    "already written there; a folder filled by another model, risk or "
                    "threshold is refused)")
    pr.add_argument("--split", choices=["train", "val", "test", "all"],
                    help="INPUT is an ingested dataset: predict this split")
    pr.add_argument("--risk", default=DEFAULT_RISK, choices=list(RISKS),
                    help=f"quality-control risk (default {DEFAULT_RISK}; "
                    "docs/quality_control.md compares them)")
    pr.add_argument("--review-threshold", type=float, default=None, metavar="R",
                    help="flag images with risk >= R for review (default: the risk's own "
                    f"threshold, chosen on a validation split; {DEFAULT_RISK}: "
                    f"{RISKS[DEFAULT_RISK].review_threshold})")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write <id>_probability.png (probability x 255)")
    pr.add_argument("--actors", type=_positive_int, default=1, help="predictor actors (default 1)")
    pr.add_argument("--cpus-per-actor", type=float, default=None,
                    help="CPUs per actor (default: the cluster's CPUs shared among the actors, "
                    "at least 1, at most one node's)")
    pr.add_argument("--gpus-per-actor", type=float, default=0.0,
                    help="GPU share per actor, e.g. 0.25 (default 0: CPU)")
    pr.add_argument("--batch-size", type=_positive_int, default=8, help="images per forward pass "
                    "(default 8)")
    pr.add_argument("--tracking-uri", help="MLflow URI for runs:/ and models:/ MODELs "
                    "(default: MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    pr.set_defaults(func=_cmd_predict)

    rg = sub.add_parser("register", help="register a run's MLflow Model in the MLflow model "
                        "registry under a name (models:/<name>/<version>)")
    rg.add_argument("run", help="run directory (as printed by `htl-ray train`)")
    rg.add_argument("name", help="registered model name")
    rg.add_argument("--tracking-uri", help="the MLflow store to register in (default: the "
                    "run's own, as recorded in its run directory)")
    rg.set_defaults(func=_cmd_register)

    tu = sub.add_parser("tune", help="hyperparameter sweep: Ray Tune trials of training runs, "
                        "Optuna TPE search, one MLflow parent run with a child run per trial")
    tu.add_argument("sweep", help="sweep YAML (base config, sweep settings, search space)")
    tu.add_argument("overrides", nargs="*", help="dotted.key=value overrides of the base config")
    tu.add_argument("--resume", action="store_true",
                    help="continue an interrupted sweep (finished trials are not repeated)")
    tu.add_argument("--confirm", type=int, default=0, metavar="N",
                    help="then re-run the best config and its ERM baseline with N seeds each")
    tu.add_argument("--ablate", action="store_true",
                    help="then train the sweep file's ablations (variants of the best config), "
                         "scored on val only")
    tu.set_defaults(func=_cmd_tune)

    pa = sub.add_parser("paired", help="two runs on the same images: per-image paired "
                        "differences of their best checkpoints, bootstrap CI over images")
    pa.add_argument("run_a", help="run directory")
    pa.add_argument("run_b", help="run directory (the baseline)")
    pa.add_argument("--split", default="test", type=_paired_split, help="test, val, or "
                    "external/<name> (after `htl-ray evaluate RUN --data DATASET --name <name>` "
                    "of both runs)")
    pa.add_argument("--boot", type=_positive_int, default=10000, help="bootstrap resamples")
    pa.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    pa.set_defaults(func=_cmd_paired)

    rp = sub.add_parser("reproduce", help="the reproduction protocol: per setting, an HTL "
                        "sweep on train/val, then HTL vs ERM, placebo and loss-based attention "
                        "over seeds on the test split; resumable; regenerates the results page")
    rp.add_argument("sweeps", nargs="+", help="one sweep file per setting (with "
                    "sweep.comparators), e.g. experiments/reproduce/*.yaml")
    rp.add_argument("--seeds", type=_positive_int, default=3, help="seeds per method (default 3)")
    rp.add_argument("--results", default="docs/results.md", help="page whose generated block "
                    "is replaced (default docs/results.md)")
    rp.add_argument("--report-only", action="store_true", help="only regenerate the results "
                    "from MLflow (and bring the --archive up to date both ways); train nothing")
    rp.add_argument("--archive", metavar="DIR", help="protocol archive: finished runs as small "
                    "JSON files, imported into MLflow first and written after every run; "
                    "commit it to continue the protocol on another machine (the make target "
                    "uses experiments/reproduce/archive)")
    rp.add_argument("--block", type=_block_name, help="write the page's block of this name "
                    "instead of the protocol's own (a later round beside the first on one "
                    "page, e.g. --block round2)")
    rp.add_argument("--external", action="append", default=[], metavar="DATASET",
                    help="an ingested test-only dataset of another site (`data ingest ... "
                    "--all-test`): every confirmation run is also scored on it and the page "
                    "shows the per-group effects there; repeatable")
    rp.add_argument("--no-ablations", action="store_true", help="skip the sweep files' "
                    "ablations (variants of each chosen configuration, scored on val only; by "
                    "default they run after every setting's confirmation runs)")
    rp.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override for every sweep's base config (or "
                    "sweep.* settings), e.g. --set train.epochs=4; repeatable")
    rp.add_argument("--set-from", metavar="FILE", help="a YAML list of KEY=VALUE overrides "
                    "applied before --set ones (e.g. experiments/reproduce/gpu/overrides.yaml)")
    rp.set_defaults(func=_cmd_reproduce)

    cmp = sub.add_parser("compare", help="table of runs grouped by configuration: mean and 95%% "
                         "CI over seeds, paired difference to the ERM baseline")
    cmp.add_argument("experiment", help="MLflow experiment name")
    cmp.add_argument("--tracking-uri", help="MLflow URI (default: MLFLOW_TRACKING_URI or "
                     "sqlite:///mlflow.db)")
    cmp.add_argument("--sweep", help="only the runs of this sweep")
    cmp.add_argument("--role", choices=[TRIAL_ROLE, CONFIRM_ROLE, ABLATION_ROLE],
                     help="only sweep trials, confirmation runs or ablation runs")
    cmp.add_argument("--filter", help="extra MLflow search filter, e.g. "
                     "\"params.`supervision.setting` = 'semi'\"")
    cmp.add_argument("--split", default="val", help="metrics of this split (default val; "
                     "test, or external/<name> after `htl-ray evaluate RUN --data ...`)")
    cmp.add_argument("--baseline", action="append", metavar="KEY=VALUE",
                     help="what makes a run a baseline (default htl.method=erm; repeatable)")
    cmp.add_argument("--out", help="output folder for compare.md / compare.csv "
                     "(default compare/EXPERIMENT)")
    cmp.set_defaults(func=_cmd_compare)

    rep = sub.add_parser("report", help="HTL report of a run: who is hard (enrichment per "
                         "group), per-group performance, worst groups, top HTL gallery")
    rep.add_argument("run", help="run directory (as printed by `htl-ray train`)")
    rep.add_argument("--baseline", metavar="RUN", help="a baseline run directory to set beside")
    rep.add_argument("--out", help="output folder (default RUN/report)")
    rep.add_argument("--top", type=_positive_int, default=8, help="HTL samples in the gallery")
    rep.set_defaults(func=_cmd_report)

    demo = sub.add_parser("demo", help="the product end to end on synthetic data: training "
                          "with HTL attention (2 CPU workers), the HTL report, predictions "
                          "with the quality-control risk")
    demo.add_argument("overrides", nargs="*", help="dotted.key=value overrides")
    demo.set_defaults(func=_cmd_demo)
    return p


def _user_error_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, UserError):
        return first_line(describe_os_error(exc), limit=500)
    return first_line(exc, limit=1000)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user's mistake is one `error:` line and exit 2; Ctrl-C or SIGTERM
    exit 130 keeping every result written; anything else is a bug: its traceback, a pointer
    to report it, exit 1."""
    args = build_parser().parse_args(argv)
    if getattr(args, "command", None) == "train" and args.config and "=" in args.config:
        args.overrides.insert(0, args.config)  # `htl-ray train key=value` without a YAML
        args.config = None

    show_progress()                      # modules' progress lines on stdout (console.py)
    handle_sigterm_as_interrupt()        # `ray job stop`, `kill`: like Ctrl-C (interrupts.py)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("htl-ray: interrupted; results already written are kept (a training run or a "
              "sweep continues with --resume; `htl-ray reproduce` and `htl-ray predict` by "
              "running the same command again)", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: out of memory; use smaller images (--size, data.batch_size) or a machine "
              "with more memory", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line's one boundary
        cause = find_user_error(exc)
        if cause is None:
            raise_as_bug(exc)
            return 1
        print(f"error: {_user_error_line(cause)}", file=sys.stderr)
        return 2


def raise_as_bug(exc: BaseException) -> None:
    """Not a user's mistake: show the traceback and where to report it."""
    import traceback

    traceback.print_exception(exc)
    print(f"htl-ray: internal error ({type(exc).__name__}); this is a bug in htl-ray, not in "
          f"your input. Please report it, with the command and the traceback above, "
          f"to {REPORT_TO}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

"""A stranger's mistakes across every command: each ends with its exit status, one `error:`
line that names the file, key or option and what was expected, no traceback, and nothing
written, changed or lost.

The cases run `htl_ray.cli.main` in this process (each fails before Ray or a tracking store is
touched, so a second each); the former hangs and the cases that need a live Ray cluster run as
real processes below. docs/reliability.md lists every case.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from htl_ray.cli import main
from htl_ray.config import load_config

RUN_ID = "0" * 32


@dataclass
class Case:
    argv: list[str]
    expect: str                      # text the one error line must contain
    code: int = 2
    # paths (relative to the world) the command may write; everything else must be unchanged
    may_write: tuple[str, ...] = ()
    stdout: str = ""                 # for exit 1 cases: what stdout must say instead
    files: dict[str, bytes | str] = field(default_factory=dict)   # extra files of this case


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link"
            elif p.is_file():
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = "dir"
    return out


@pytest.fixture(scope="module")
def silent_server():
    """A TCP port that accepts connections and never answers: a server that hangs."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory, silent_server) -> Path:
    """A dataset, run directories with broken checkpoints, bad configs and bad source folders."""
    import torch

    from htl_ray.data.synth import synthesize

    root = tmp_path_factory.mktemp("world")
    synthesize(root / "ds", n=40, size=24, seed=0)
    synthesize(root / "ds_no_test", n=20, size=24, seed=0, fractions=(0.5, 0.5, 0.0))
    # a dataset whose records file was cut short, one whose manifest was
    for name in ("ds_cut_records", "ds_cut_manifest"):
        shutil.copytree(root / "ds", root / name)
    records = root / "ds_cut_records" / "records.parquet"
    records.write_bytes(records.read_bytes()[:1000])
    (root / "ds_cut_manifest" / "manifest.json").write_text('{"split_counts": {"tr')

    cfg = load_config(None, [f"data.path={root / 'ds'}", "run.name=broken",
                             f"run.storage_path={root}", f"tracking.uri=sqlite:///{root}/m.db"])
    good = torch.save
    for run, content in (("run_garbage", b"not a checkpoint at all"), ("run_empty", b""),
                         ("run_cut", None), ("run_no_model", None)):
        ckpt = root / run / "checkpoint_2026-01-01_00-00-00.000000"
        ckpt.mkdir(parents=True)
        (root / run / "htl_run.json").write_text(json.dumps(
            {"mlflow_run_id": RUN_ID, "tracking_uri": f"sqlite:///{root}/m.db",
             "run_dir": str(root / run), "config": cfg.to_dict(), "input_size": [24, 24]}))
        (ckpt / "meta.json").write_text(json.dumps({"epoch": 0, "metrics": {"val/dice": 0.5},
                                                    "model_config": cfg.to_dict()["model"]}))
        if run == "run_cut":
            good({"model": {"w": torch.zeros(1000)}}, ckpt / "checkpoint.pt")
            data = (ckpt / "checkpoint.pt").read_bytes()
            content = data[: len(data) // 2]
        if run == "run_no_model":
            good({"weights": torch.zeros(3)}, ckpt / "checkpoint.pt")
            continue
        (ckpt / "checkpoint.pt").write_bytes(content)
    # a loadable checkpoint of the configured model
    from htl_ray.models import create_model

    ok = root / "ckpt_ok"
    ok.mkdir()
    good({"model": create_model(cfg.model).state_dict()}, ok / "checkpoint.pt")
    (ok / "meta.json").write_text(json.dumps({"epoch": 0, "model_config":
                                              cfg.to_dict()["model"]}))
    # a run whose MLflow writes wait in its outbox, and whose server does not answer
    (root / "run_pending" / "mlflow_outbox").mkdir(parents=True)
    (root / "run_pending" / "htl_run.json").write_text(json.dumps(
        {"mlflow_run_id": RUN_ID, "tracking_uri": silent_server, "config": cfg.to_dict()}))
    (root / "run_pending" / "mlflow_outbox" / "rank0.jsonl").write_text(json.dumps(
        {"kind": "metrics", "step": 0, "values": {"train/loss": 0.5}, "ts": 1}) + "\n")
    (root / "run_badstate").mkdir()
    (root / "run_badstate" / "htl_run.json").write_text('{"mlflow_run_id": ')

    (root / "a_file").write_text("I am a file\n")
    (root / "dup_key.yaml").write_text("train:\n  lr: 0.001\n  epochs: 2\n  lr: 0.01\n")
    (root / "bad.yaml").write_text("train: [unclosed\n")
    (root / "typo.yaml").write_text("train:\n  epoch: 2\n")
    (root / "sweep_typo.yaml").write_text(
        "sweep: {nmae: x}\nspace:\n  htl.lam: {type: float, low: 0.5, high: 4.0}\n")
    (root / "sweep_base.yaml").write_text("base: {}\nspace: {}\n")
    (root / "sweep_ok.yaml").write_text(
        f"sweep: {{name: cut, storage_path: {root}/sweeps}}\n"
        "space:\n  htl.lam: {type: float, low: 0.5, high: 4.0}\n")
    (root / "sweep_reuse.yaml").write_text(
        f"sweep: {{name: later, storage_path: {root}/sweeps}}\n"
        "space:\n  htl.lam: {type: float, low: -0.9, high: -0.2}\n"
        "reuse: {sweep: round_one.yaml, groups: {erm: erm}}\n")
    (root / "sweeps" / "cut").mkdir(parents=True)
    (root / "sweeps" / "cut" / "sweep_state.json").write_text('{"parent_run_id": "ab')

    # source folders: folder layout, one of unreadable images only, ISIC-like without masks
    from PIL import Image

    for name in ("src_folder", "src_corrupt"):
        (root / name / "images").mkdir(parents=True)
        (root / name / "masks").mkdir()
    img = Image.new("RGB", (32, 32), (200, 150, 120))
    img.save(root / "src_folder" / "images" / "a.png")
    Image.new("L", (32, 32), 255).save(root / "src_folder" / "masks" / "a.png")
    (root / "src_folder" / "meta.csv").write_text("id,age,age\na,30,40\n")
    (root / "src_corrupt" / "images" / "a.jpg").write_bytes(b"\xff\xd8 garbage")
    (root / "src_corrupt" / "masks" / "a.png").write_bytes(b"garbage")
    (root / "outside.csv").write_text("id,age\na,3\n")
    return root


def _cases(w: str, server: str) -> dict[str, Case]:
    """Every case, by name; `w` is the world folder, `server` one that never answers."""
    train = ["train", f"data.path={w}/ds", f"run.storage_path={w}/runs",
             f"tracking.uri=sqlite:///{w}/m.db"]
    ing = ["data", "ingest", f"{w}/src_folder", "--layout", "folder"]
    return {
        # ---- data ingest
        "ingest: source folder missing": Case(
            ["data", "ingest", f"{w}/nope", "--layout", "folder", "--out", f"{w}/o"],
            "source folder not found"),
        "ingest: source is a file": Case(
            ["data", "ingest", f"{w}/a_file", "--layout", "folder", "--out", f"{w}/o"],
            "source folder not found"),
        "ingest: --out is a file": Case([*ing, "--out", f"{w}/a_file"],
                                        "exists and is not a folder"),
        "ingest: --out under a file": Case([*ing, "--out", f"{w}/a_file/sub"],
                                           "is a file, not a folder"),
        "ingest: --out not writable": Case([*ing, "--out", "/proc/htl-ray-out"],
                                           "--out /proc/htl-ray-out: cannot write"),
        "ingest: --size too large": Case([*ing, "--out", f"{w}/o", "--size", "100000"],
                                         "--size 100000: expected 8 to 2048"),
        "ingest: --size too small": Case([*ing, "--out", f"{w}/o", "--size", "4"],
                                         "--size 4: expected 8 to 2048"),
        "ingest: --fractions two numbers": Case([*ing, "--out", f"{w}/o", "--fractions",
                                                 "0.5,0.5"], "expected three numbers"),
        "ingest: --fractions not summing to 1": Case(
            [*ing, "--out", f"{w}/o", "--fractions", "0.9,0.2,0.1"], "sum 1"),
        "ingest: --drop with an unknown key": Case(
            [*ing, "--out", f"{w}/o", "--drop", "lesionid=MSK4_*"],
            "--drop 'lesionid=MSK4_*': unknown key 'lesionid' (did you mean lesion_id?)"),
        "ingest: --keep matching no image": Case(
            [*ing, "--out", f"{w}/o", "--keep", "id=MSK4_*"],
            "--keep id=MSK4_*: no image's id matches 'MSK4_*'"),
        "ingest: wrong layout for the folder": Case(
            ["data", "ingest", f"{w}/src_folder", "--layout", "isic", "--out", f"{w}/o"],
            "no ISIC image folder"),
        "ingest: folder layout without masks/": Case(
            ["data", "ingest", f"{w}/ds", "--layout", "folder", "--out", f"{w}/o"],
            "expected folder images/"),
        "ingest: mask pattern without {id}": Case(
            [*ing, "--out", f"{w}/o", "--mask-pattern", "mask.png"], "must contain '{id}'"),
        "ingest: unknown --column-map field": Case(
            [*ing, "--out", f"{w}/o", "--column-map", "id=x,years=age"],
            "--column-map: unknown field 'years'"),
        "ingest: metadata outside the data folder": Case(
            [*ing, "--out", f"{w}/o", "--metadata", "../outside.csv"],
            "outside the data folder"),
        "ingest: metadata column repeated": Case(
            [*ing, "--out", f"{w}/o", "--metadata", "meta.csv"],
            "column 'age' appears 2 times"),
        "ingest: metadata file missing": Case(
            [*ing, "--out", f"{w}/o", "--metadata", "missing.csv"], "metadata file not found"),
        "ingest: --diagnosis with the folder layout": Case(
            [*ing, "--out", f"{w}/o", "--diagnosis", "d.csv"],
            "--diagnosis: applies to --layout isic, not folder"),
        "ingest: --mask-pattern with the isic layout": Case(
            ["data", "ingest", f"{w}/src_folder", "--layout", "isic", "--out", f"{w}/o",
             "--mask-pattern", "{id}_m.png"], "--mask-pattern: applies to --layout folder"),
        "ingest: --column-map with the ph2 layout": Case(
            ["data", "ingest", f"{w}/src_folder", "--layout", "ph2", "--out", f"{w}/o",
             "--column-map", "id=x"], "--column-map: applies to --layout folder"),
        "ingest: no usable record (report kept)": Case(
            ["data", "ingest", f"{w}/src_corrupt", "--layout", "folder", "--out", f"{w}/o"],
            "no usable records", may_write=("o",)),
        "ingest: unknown layout": Case([*ing[:-1], "coco", "--out", f"{w}/o"],
                                       "invalid choice: 'coco'"),
        # ---- data synth
        "synth: --n 0": Case(["data", "synth", "--out", f"{w}/o", "--n", "0"],
                             "expected at least 1"),
        "synth: --size 8": Case(["data", "synth", "--out", f"{w}/o", "--size", "8"],
                                "--size 8: synthetic lesions need at least 16"),
        "synth: --size 100000": Case(["data", "synth", "--out", f"{w}/o", "--size", "100000"],
                                     "--size 100000: expected 8 to 2048"),
        "synth: --out is a file": Case(["data", "synth", "--out", f"{w}/a_file"],
                                       "exists and is not a folder"),
        # ---- train: config, before Ray
        "train: unknown key": Case([*train, "train.epoch=2"], "did you mean 'train.epochs'"),
        "train: wrong type": Case([*train, "train.epochs=three"],
                                  "train.epochs: expected an integer"),
        "train: lr infinite": Case([*train, "train.lr=.inf"],
                                   "train.lr: expected a finite number, got inf"),
        "train: lr not a number": Case([*train, "train.lr=.nan"],
                                       "train.lr: expected a finite number, got nan"),
        "train: unknown model.arch": Case([*train, "model.arch=unet2"],
                                          "model.arch: 'unet2' is not a segmentation_models"),
        "train: unknown model.encoder": Case([*train, "model.encoder=resnet19"],
                                             "did you mean resnet18"),
        "train: unknown timm encoder": Case([*train, "model.encoder=tu-nonet"],
                                            "timm has no model 'nonet'"),
        "train: decoder that does not fit": Case([*train, "model.decoder_channels=[8,8]"],
                                                 "model: smp cannot build"),
        "train: repeated sparsity": Case([*train, "htl.sparsities=[0.5,0.5]"],
                                         "htl.sparsities[1]: 0.5 is listed twice"),
        "train: sparsity out of range": Case([*train, "htl.sparsities=[0.5,1.0]"],
                                             "htl.sparsities[1]: must be in (0, 1)"),
        "train: data.path missing": Case([*train, f"data.path={w}/nope"],
                                         "data.path: dataset folder not found"),
        "train: records file cut short": Case([*train, f"data.path={w}/ds_cut_records"],
                                              "is not a readable Parquet file"),
        "train: manifest cut short": Case([*train, f"data.path={w}/ds_cut_manifest"],
                                          "manifest.json: not readable as JSON"),
        "train: run.storage_path is a file": Case(
            [*train, f"run.storage_path={w}/a_file"],
            f"run.storage_path {w}/a_file: exists and is not a folder"),
        "train: config key repeated in YAML": Case(
            ["train", f"{w}/dup_key.yaml", f"data.path={w}/ds"], "key 'lr' appears twice"),
        "train: config not YAML": Case(["train", f"{w}/bad.yaml"], "not valid YAML"),
        "train: config file missing": Case(["train", f"{w}/nope.yaml"],
                                           "config file not found"),
        "train: key typo in YAML": Case(["train", f"{w}/typo.yaml"],
                                        "unknown key 'train.epoch'"),
        "train: override without =": Case(["train", "lr", "train.epochs=1"],
                                          "config file not found: lr"),
        "train: --resume of a folder that is no run": Case(
            ["train", "--resume", f"{w}/ds"], "ds: no htl_run.json there; not a run directory"),
        "train: --resume with a cut run state": Case(
            ["train", "--resume", f"{w}/run_badstate"], "not readable as JSON"),
        "train: --resume moving the run by override": Case(
            ["train", "--resume", f"{w}/run_garbage", "run.name=elsewhere"],
            "run.name: a resumed run stays in the directory given"),
        "train: semi-supervised with every mask": Case(
            [*train, "supervision.setting=semi"], "supervision.label_fraction"),
        "train: new run over a cut run state": Case(
            [*train, f"run.storage_path={w}", "run.name=run_badstate"],
            "run_badstate/htl_run.json: not readable as JSON"),
        # ---- evaluate
        "evaluate: cut run state": Case(["evaluate", f"{w}/run_badstate"],
                                        "run_badstate/htl_run.json: not readable as JSON"),
        "evaluate: not a run directory": Case(["evaluate", f"{w}/ds"],
                                              "not a run directory"),
        "evaluate: checkpoint of garbage": Case(["evaluate", f"{w}/run_garbage"],
                                                "not a loadable checkpoint"),
        "evaluate: empty checkpoint": Case(["evaluate", f"{w}/run_empty"],
                                           "not a loadable checkpoint"),
        "evaluate: checkpoint cut short": Case(["evaluate", f"{w}/run_cut"],
                                               "not a loadable checkpoint"),
        "evaluate: checkpoint without model weights": Case(
            ["evaluate", f"{w}/run_no_model"], "not an htl-ray checkpoint (no 'model' weights"),
        "evaluate: --name without --data": Case(
            ["evaluate", f"{w}/run_garbage", "--name", "x"], "--name names the site of --data"),
        "evaluate: --data missing": Case(
            ["evaluate", f"{w}/run_garbage", "--data", f"{w}/nope"],
            f"--data: {w}/nope/manifest.json: missing dataset manifest"),
        "evaluate: unknown split": Case(["evaluate", f"{w}/run_garbage", "--split", "dev"],
                                        "invalid choice: 'dev'"),
        # ---- score
        "score: checkpoint missing": Case(["score", f"{w}/nope", f"{w}/ds"],
                                          "not a checkpoint"),
        "score: checkpoint of garbage": Case(
            ["score", f"{w}/run_garbage/checkpoint_2026-01-01_00-00-00.000000", f"{w}/ds"],
            "not a loadable checkpoint"),
        "score: checkpoint cut short": Case(
            ["score", f"{w}/run_cut/checkpoint_2026-01-01_00-00-00.000000", f"{w}/ds"],
            "not a loadable checkpoint"),
        "score: checkpoint without model weights": Case(
            ["score", f"{w}/run_no_model/checkpoint_2026-01-01_00-00-00.000000", f"{w}/ds"],
            "not an htl-ray checkpoint"),
        "score: split without rows": Case(
            ["score", f"{w}/ckpt_ok", f"{w}/ds_no_test", "--split", "test"],
            "the test split has no rows"),
        "score: dataset missing": Case(["score", f"{w}/ckpt_ok", f"{w}/nope"],
                                       "DATA: " + f"{w}/nope/manifest.json: missing"),
        "score: dataset cut short": Case(["score", f"{w}/ckpt_ok", f"{w}/ds_cut_records"],
                                         "is not a readable Parquet file"),
        "score: --out under a file": Case(
            ["score", f"{w}/ckpt_ok", f"{w}/ds", "--out", f"{w}/a_file/s.parquet"],
            "a_file: exists and is not a folder"),
        "score: --actors 0": Case(["score", f"{w}/x", f"{w}/ds", "--actors", "0"],
                                  "argument --actors: '0': expected at least 1"),
        "score: sparsity 1.5": Case(["score", f"{w}/x", f"{w}/ds", "--sparsities", "0.5,1.5"],
                                    "every sparsity must be in (0, 1)"),
        # ---- report
        "report: not a run directory": Case(["report", f"{w}/ds"], "not a run directory"),
        "report: cut run state": Case(["report", f"{w}/run_badstate"],
                                      "run_badstate/htl_run.json: not readable as JSON"),
        "report: --top 0": Case(["report", f"{w}/run_garbage", "--top", "0"],
                                "expected at least 1"),
        # ---- compare
        "compare: tracking server does not answer": Case(
            ["compare", "exp", "--tracking-uri", server],
            f"--tracking-uri: MLflow server {server} is not reachable within 5 s"),
        "compare: SQLite store that does not exist": Case(
            ["compare", "exp", "--tracking-uri", f"sqlite:///{w}/none.db"],
            "--tracking-uri: no MLflow store at"),
        "compare: unknown role": Case(["compare", "exp", "--role", "boss"],
                                      "invalid choice: 'boss'"),
        # ---- paired
        "paired: not run directories": Case(["paired", f"{w}/ds", f"{w}/ds"],
                                            "not a run directory"),
        "paired: cut run state": Case(["paired", f"{w}/run_badstate", f"{w}/run_garbage"],
                                      "run_badstate/htl_run.json: not readable as JSON"),
        "paired: unknown split": Case(["paired", f"{w}/ds", f"{w}/ds", "--split", "dev"],
                                      "expected test, val or external/<name>"),
        "paired: --boot 0": Case(["paired", f"{w}/ds", f"{w}/ds", "--boot", "0"],
                                 "expected at least 1"),
        # ---- sync
        "sync: not a run directory": Case(["sync", f"{w}/ds"], "not a run directory"),
        "sync: server does not answer (writes kept)": Case(
            ["sync", f"{w}/run_pending"], "", code=1, stdout="still pending 1 from rank0"),
        # ---- predict
        "predict: model missing": Case(["predict", f"{w}/nope", f"{w}/ds", "--split", "test",
                                        "--out", f"{w}/p"], f"MODEL: {w}/nope does not exist"),
        "predict: dataset without --split": Case(
            ["predict", f"{w}/run_garbage", f"{w}/ds", "--out", f"{w}/p"],
            "is an ingested dataset; name the split"),
        "predict: checkpoint of garbage": Case(
            ["predict", f"{w}/run_garbage", f"{w}/src_folder/images", "--out", f"{w}/p"],
            "checkpoint.pt is not a loadable checkpoint"),
        "predict: input missing": Case(
            ["predict", f"{w}/run_garbage", f"{w}/nope", "--out", f"{w}/p"],
            f"INPUT: {w}/nope does not exist"),
        "predict: threshold above 1": Case(
            ["predict", f"{w}/run_garbage", f"{w}/ds", "--out", f"{w}/p",
             "--review-threshold", "2"], "--review-threshold"),
        "predict: unknown risk": Case(
            ["predict", f"{w}/run_garbage", f"{w}/ds", "--out", f"{w}/p", "--risk", "vibes"],
            "invalid choice: 'vibes'"),
        "predict: tracking server does not answer": Case(
            ["predict", f"runs:/{RUN_ID}/model", f"{w}/ds", "--split", "test", "--out",
             f"{w}/p", "--tracking-uri", server], "is not reachable within 5 s"),
        # ---- register
        "register: not a run directory": Case(["register", f"{w}/ds", "m"],
                                              "not a run directory"),
        "register: cut run state": Case(["register", f"{w}/run_badstate", "m"],
                                        "run_badstate/htl_run.json: not readable as JSON"),
        "register: tracking server does not answer": Case(
            ["register", f"{w}/run_garbage", "m", "--tracking-uri", server],
            "is not reachable within 5 s"),
        # ---- tune, reproduce
        "tune: sweep file missing": Case(["tune", f"{w}/nope.yaml"], "nope.yaml"),
        "tune: unknown sweep key": Case(["tune", f"{w}/sweep_typo.yaml"], "nmae"),
        "tune: --resume of a cut sweep state": Case(
            ["tune", f"{w}/sweep_ok.yaml", f"data.path={w}/ds", "--resume"],
            "cut/sweep_state.json: not readable as JSON"),
        "tune: base not a path": Case(["tune", f"{w}/sweep_base.yaml"],
                                      "base: expected the path of a config file"),
        "reproduce: --seeds 0": Case(["reproduce", f"{w}/nope.yaml", "--seeds", "0"],
                                     "expected at least 1"),
        "reproduce: --block not a name": Case(
            ["reproduce", f"{w}/sweep_ok.yaml", "--block", "Round 2"],
            "'Round 2': expected lower-case letters, digits and dashes"),
        "reproduce: --external not a dataset": Case(
            ["reproduce", f"{w}/sweep_ok.yaml", "--external", f"{w}/src_folder",
             "--report-only"], "--external: "),
        "reproduce: reuse of a sweep file not there": Case(
            ["reproduce", f"{w}/sweep_reuse.yaml", "--report-only"],
            "reuse.sweep: sweep file not found"),
    }


CASE_NAMES = list(_cases("W", "S"))


def test_the_matrix_has_at_least_60_cases_over_every_command_each_listed_in_the_docs():
    assert len(CASE_NAMES) >= 60
    commands = {name.split(":")[0] for name in CASE_NAMES}
    assert {"ingest", "synth", "train", "evaluate", "score", "report", "compare", "paired",
            "sync", "predict", "register", "tune", "reproduce"} <= commands
    page = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text()
    assert [n for n in CASE_NAMES if f"| {n} |" not in page] == []


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_mistake_is_one_error_line_and_nothing_is_written(name, world, silent_server,
                                                           tmp_path, monkeypatch, capsys):
    case = _cases(str(world), silent_server)[name]
    monkeypatch.chdir(tmp_path)                     # default outputs would land here
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    before = _snapshot(world)
    t0 = time.time()
    try:
        code = main(case.argv)
    except SystemExit as exc:                       # argparse: usage line + error line
        code = exc.code
    elapsed = time.time() - t0
    out, err = capsys.readouterr()
    assert code == case.code, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    assert elapsed < 30
    if case.code == 2:
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err
        assert case.expect in errors[0], errors[0]
    else:
        assert case.stdout in out, out
    after = _snapshot(world)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)
               and not any(k == p or k.startswith(p + "/") for p in case.may_write)}
    assert changed == set(), f"{name} wrote or changed {sorted(changed)}"
    assert list(tmp_path.iterdir()) == [], "wrote into the working directory"


def _htl_ray(args: list[str], timeout: float, ray_address: str | None = None,
             **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",
                                                            "MLFLOW_TRACKING_URI")}
    if ray_address:
        env["RAY_ADDRESS"] = ray_address
    return subprocess.run([sys.executable, "-m", "htl_ray.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env, **kw)


def test_former_hang_workers_beyond_the_cluster_without_htl_ends_in_seconds(ray_cluster, world,
                                                                           tmp_path):
    """ERM with more workers than the cluster has CPUs: Ray Train retried every 60 s, for
    ever; now one error names the key before an MLflow run exists (a real process joining
    the session's 2-CPU cluster, as `ray job submit` would)."""
    t0 = time.time()
    done = _htl_ray(["train", f"data.path={world}/ds", f"run.storage_path={tmp_path}/runs",
                     f"tracking.uri=sqlite:///{tmp_path}/m.db", "htl.method=erm",
                     "scaling.num_workers=64"], timeout=120, cwd=tmp_path,
                    ray_address=ray_cluster.get_runtime_context().gcs_address)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: scaling.num_workers: 64 workers × 1.0 CPU = 64 CPUs, but the Ray "
                      "cluster has 2; lower scaling.num_workers or "
                      "scaling.resources_per_worker.CPU (fractions are fine)"], done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "m.db").exists()
    assert time.time() - t0 < 30


def test_former_hangs_against_a_server_that_does_not_answer_end_within_30_s(world,
                                                                          silent_server,
                                                                          tmp_path):
    """compare and sync against a server that accepts and never answers, and a training run
    whose RAY_ADDRESS has no cluster, as real processes."""
    t0 = time.time()
    done = _htl_ray(["train", f"data.path={world}/ds", f"run.storage_path={tmp_path}/runs",
                     f"tracking.uri=sqlite:///{tmp_path}/m.db"], timeout=60,
                    ray_address="127.0.0.1:1", cwd=tmp_path)
    assert time.time() - t0 < 30 and done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1].startswith(
        "error: RAY_ADDRESS 127.0.0.1:1: no Ray cluster answers there within 5 s")
    assert list(tmp_path.iterdir()) == []
    for args, code, said in (
            (["compare", "exp", "--tracking-uri", silent_server], 2,
             "is not reachable within 5 s"),
            (["sync", str(world / "run_pending")], 1, "still pending")):
        t0 = time.time()
        done = _htl_ray(args, timeout=60)
        assert time.time() - t0 < 30
        assert done.returncode == code, done.stderr
        assert said in done.stdout + done.stderr
        assert "Traceback" not in done.stderr
    assert (world / "run_pending" / "mlflow_outbox" / "rank0.jsonl").is_file()   # kept


def test_an_internal_bug_keeps_its_traceback_and_says_where_to_report_it(capsys, monkeypatch):
    """Also a bug raised while a user's missing file was being handled: that file is the
    bug's context, not its cause, and must not turn the bug into an `error:` line."""
    import htl_ray.cli as cli

    def broken(args):
        raise ZeroDivisionError("division by zero")

    def broken_fallback(args):
        try:
            open("/nonexistent/htl-ray/file")
        except FileNotFoundError:
            return {}["key"]                    # a bug in the except branch

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    for func, name in ((broken, "ZeroDivisionError"), (broken_fallback, "KeyError")):
        parser._subparsers._group_actions[0].choices["paired"].set_defaults(func=func)
        assert main(["paired", "a", "b"]) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and name in err and "error:" not in err
        assert "this is a bug in htl-ray, not in your input" in err

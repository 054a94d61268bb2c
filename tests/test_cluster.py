"""Cluster checks, and `ray job submit` against a real two-node Ray cluster on 127.0.0.1.

The two nodes are two raylets on this machine (`ray start --head` and `ray start --address`):
to Ray they are two nodes, so the multi-node storage rule applies, while their files are in
fact shared — which lets the same cluster show both the refusal and a successful run."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import descendants, processes

from htl_ray.cluster import (
    API_SERVER_ADDRESS_VAR,
    DASHBOARD_PORT,
    ClusterView,
    check_cluster,
    check_resources,
    check_shared_storage,
    check_storage_uri,
    cpus_needed,
    free_local_port,
    gpus_needed,
    tracking_warnings,
)
from htl_ray.config import ConfigError, load_config
from htl_ray.run_dir import CHECKPOINT_FILE

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _cfg(*overrides: str):
    return load_config(None, list(overrides))


def test_local_storage_on_several_nodes_is_refused_unless_declared_shared():
    cfg = _cfg("run.storage_path=/data/runs")
    check_shared_storage(cfg, ClusterView(nodes=1, cpus=2, gpus=0))       # one node: fine
    with pytest.raises(ConfigError, match=r"run.storage_path: this Ray cluster has 3 nodes.*"
                                          r"run.shared_storage=true"):
        check_shared_storage(cfg, ClusterView(nodes=3, cpus=12, gpus=2))
    check_shared_storage(_cfg("run.shared_storage=true"), ClusterView(nodes=3, cpus=12, gpus=2))


@pytest.mark.parametrize("key", ["run.storage_path", "data.path"])
def test_object_store_uris_are_refused_with_the_key_and_the_alternative(key):
    with pytest.raises(ConfigError, match=rf"{key}: object-store URIs \(s3://\).*shared_storage"):
        check_storage_uri(_cfg(f"{key}=s3://bucket/runs"))
    check_storage_uri(_cfg(f"{key}=/mnt/shared/runs"))


def test_sqlite_tracking_warns_on_several_nodes_only():
    uri = "sqlite:////home/me/mlflow.db"
    assert tracking_warnings(uri, ClusterView(nodes=1, cpus=2, gpus=0)) == []
    (warning,) = tracking_warnings(uri, ClusterView(nodes=2, cpus=8, gpus=1))
    assert "SQLite" in warning and "2 nodes" in warning and "mlflow server" in warning
    assert tracking_warnings("http://head:5000", ClusterView(nodes=2, cpus=8, gpus=1)) == []


def test_gpu_need_counts_trainers_and_scorer_shares(capsys):
    cfg = _cfg("htl.method=htl", "scaling.use_gpu=true", "scaling.num_workers=2",
               "scaling.resources_per_worker={CPU: 4, GPU: 0.75}", "htl.scorer_actors=2",
               "htl.scorer_gpus=0.25", "run.shared_storage=true")
    assert gpus_needed(cfg) == 2 * 0.75 + 2 * 0.25
    assert gpus_needed(_cfg("htl.method=htl", "htl.scorer_gpus=0.5")) == 0.5   # CPU trainers
    assert gpus_needed(_cfg("scaling.use_gpu=true", "scaling.num_workers=3")) == 3.0
    capsys.readouterr()
    check_cluster(cfg, "http://head:5000", view=ClusterView(2, 16, 1))
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "asks for 2 GPUs" in lines[0] and "has 1 now" in lines[0]
    # the shipped GPU experiment runs on the two single-GPU nodes cluster.yaml keeps up
    shipped = load_config(REPO / "experiments" / "gpu_isic256_htl.yaml")
    check_resources(shipped, ClusterView(nodes=2, cpus=16, gpus=2))
    check_cluster(shipped, "http://head:5000", view=ClusterView(nodes=2, cpus=16, gpus=2))
    assert capsys.readouterr().out == ""                     # nothing to warn about


def test_trainers_and_scorers_must_fit_together():
    cfg = _cfg("htl.method=htl", "scaling.num_workers=2", "htl.scorer_actors=1")
    check_resources(cfg, ClusterView(nodes=1, cpus=3, gpus=0))
    with pytest.raises(ConfigError, match=r"= 3.0 CPUs, but the cluster has 2"):
        check_resources(cfg, ClusterView(nodes=1, cpus=2, gpus=0))
    check_resources(_cfg("htl.method=erm", "scaling.num_workers=2"),
                    ClusterView(nodes=1, cpus=2, gpus=0))          # no scorers, no refresh


# --- a real two-node cluster and real job submissions ------------------------------------

def _free_port() -> int:
    return free_local_port(0)


def _node_ports() -> list[str]:
    """Ports with fixed defaults, made free ones so two raylets (and the session's in-process
    cluster) can share this machine."""
    return [f"--dashboard-agent-listen-port={_free_port()}",
            f"--dashboard-agent-grpc-port={_free_port()}",
            f"--runtime-env-agent-port={_free_port()}",
            f"--metrics-export-port={_free_port()}",
            f"--node-manager-port={_free_port()}", f"--object-manager-port={_free_port()}"]


@pytest.fixture(scope="module")
def two_node_cluster(tmp_path_factory):
    """`ray start --head` bound to 127.0.0.1 (1 CPU, dashboard for the job API) plus a second
    node with 1 CPU; stopped with `ray stop` at the end."""
    temp_dir = Path(f"/tmp/htlray-jobs-{os.getpid()}")   # short: Ray's socket paths
    gcs, dashboard = _free_port(), _free_port()
    # token authentication (Ray's default for `ray start --head`) with this cluster's own
    # token, given to both nodes and to every client
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("RAY_API_SERVER_ADDRESS", None)     # the session cluster's, not this one's
    ray = str(BIN / "ray")
    subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                    "--num-cpus=1", "--num-gpus=0", "--include-dashboard=true",
                    "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--ray-client-server-port={_free_port()}", f"--temp-dir={temp_dir}",
                    "--disable-usage-stats", *_node_ports()],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        subprocess.run([ray, "start", f"--address=127.0.0.1:{gcs}",
                        "--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                        *_node_ports()], env=env, check=True, capture_output=True, timeout=180)
        yield {"address": f"http://127.0.0.1:{dashboard}", "env": env, "token": token}
    finally:
        _stop_cluster(temp_dir)


def _stop_cluster(temp_dir: Path) -> None:
    """SIGTERM, then SIGKILL, the processes of the cluster under `temp_dir` and their children.
    (`ray stop` would stop every Ray process of this user, the session cluster's too.)"""
    procs = processes()
    family = {pid for pid, (_, cmd) in procs.items() if str(temp_dir) in cmd}
    family |= set().union(*(descendants(pid, procs) for pid in family))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 2
        while time.time() < deadline and any(Path(f"/proc/{pid}").exists() for pid in family):
            time.sleep(0.5)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _submit(cluster: dict, submission_id: str, args: list[str]) -> tuple[str, str]:
    """`ray job submit --working-dir <repo> -- htl-ray train ...` (the CLI, as a user types
    it), then the job API until the job ends; returns its final status and its logs."""
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", cluster["address"],
         "--submission-id", submission_id, "--working-dir", str(REPO), "--no-wait", "--",
         "htl-ray", "train", *args], env=cluster["env"], capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    deadline = time.time() + 600
    while (status := _job_api(cluster, submission_id)["status"]) not in TERMINAL:
        assert time.time() < deadline, _job_api(cluster, submission_id, "/logs")["logs"][-3000:]
        time.sleep(1)
    return status, _job_api(cluster, submission_id, "/logs")["logs"]


TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _job_api(cluster: dict, submission_id: str, what: str = "") -> dict:
    """The job REST API with this cluster's token. (Ray's JobSubmissionClient in this process
    would send the token of the session's own cluster, which ray.init loaded, instead.)"""
    import urllib.request

    request = urllib.request.Request(f"{cluster['address']}/api/jobs/{submission_id}{what}",
                                     headers={"Authorization": f"Bearer {cluster['token']}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def test_ray_job_submit_trains_on_a_two_node_cluster_once_storage_is_shared(
        two_node_cluster, synth_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    db = tmp_path / "mlflow.db"
    args = [f"data.path={synth_dataset}", f"run.storage_path={tmp_path / 'runs'}",
            "run.name=job", f"tracking.uri=sqlite:///{db}", "tracking.experiment=jobs",
            "train.epochs=1", "data.limit_train=32", "data.batch_size=16",
            "scaling.num_workers=1", "model.decoder_channels=[32,16,8,8,8]"]

    # 1. local storage on two nodes: refused before training, and no MLflow run is left
    status, logs = _submit(two_node_cluster, "htl-local-storage", args)
    assert status == "FAILED", logs[-3000:]
    assert "run.storage_path: this Ray cluster has 2 nodes" in logs
    assert not (tmp_path / "runs" / "job").exists()

    # 2. declared shared (it is: both raylets are on this machine): the job trains
    # (bf16 autocast and channels-last, the GPU defaults, asked for explicitly: on CPU too)
    status, logs = _submit(two_node_cluster, "htl-shared-storage",
                           [*args, "run.shared_storage=true", "train.precision=bf16",
                            "train.memory_format=channels_last"])
    assert status == "SUCCEEDED", logs[-4000:]
    assert "connecting to Ray" in logs and "WARNING: MLflow store" in logs
    assert "workers compute on cpu bfloat16 autocast, channels-last" in logs
    client = MlflowClient(f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("jobs").experiment_id])
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/dice")] == [0]
    best = Path(run.data.tags["htl.best_checkpoint"])
    assert best.parent == tmp_path / "runs" / "job"
    assert (best / CHECKPOINT_FILE).is_file()


# --- the cluster files users start from ----------------------------------------------------

def test_cluster_yaml_passes_rays_own_cluster_config_validation():
    import copy

    import yaml
    from jsonschema import ValidationError
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))              # what `ray up` does first
    validate_config(config)
    nodes = config["available_node_types"]
    assert config["head_node_type"] == "head" and set(nodes) == {"head", "gpu_worker"}
    assert nodes["gpu_worker"]["min_workers"] >= 1 and config["max_workers"] >= 1
    assert any("pip install -e /home/ray/htl-ray" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ray/htl-ray"] == "."
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    # and the validation bites: a misspelt key is an error
    raw["available_node_types"]["gpu_worker"]["min_worker"] = 1
    with pytest.raises(ValidationError, match="min_worker"):
        validate_config(prepare_config(raw))


def test_kuberay_job_runs_a_valid_htl_ray_command_that_fits_its_worker_pods():
    import shlex

    import yaml

    job = yaml.safe_load((REPO / "experiments" / "kuberay" / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["htl-ray", "train"]
    config_path = REPO / Path(argv[2]).relative_to("/home/ray/htl-ray")
    cfg = load_config(config_path, argv[3:])                 # the job's config validates
    assert cfg.run.shared_storage and cfg.run.storage_path.startswith("/mnt/shared/")
    assert cfg.data.path.startswith("/mnt/shared/") and cfg.tracking.uri.startswith("http")
    spec = job["spec"]["rayClusterSpec"]
    (group,) = spec["workerGroupSpecs"]
    pod = group["template"]["spec"]["containers"][0]
    assert {"name": "shared", "mountPath": "/mnt/shared"} in pod["volumeMounts"]
    # the run's trainers and scorer actors fit on the worker pods it asks for
    requests = pod["resources"]["requests"]
    pods = group["minReplicas"]
    assert gpus_needed(cfg) <= pods * float(requests["nvidia.com/gpu"])
    assert cpus_needed(cfg) <= pods * float(requests["cpu"])


WORKER_STATE_QUERY = """
import ray
from htl_ray.cluster import init_ray
from htl_ray.console import show_progress

show_progress()
init_ray()


@ray.remote(num_cpus=0)
class Controller:                  # stands for the Ray Train controller the cleaner watches
    def ready(self):
        return True


controller = Controller.remote()
ray.get(controller.ready.remote(), timeout=120)


@ray.remote(num_cpus=0)
def actor_states_seen_from_a_worker():
    # what Ray Train's placement-group cleaner does in its actor, every second of a run
    from ray.util.state import list_actors
    return sorted({a.state for a in list_actors() if a.class_name == "Controller"})


print("WORKER SEES", ray.get(actor_states_seen_from_a_worker.remote(), timeout=120))
"""


def test_a_local_cluster_beside_another_ray_instance_keeps_the_state_api_in_its_workers(
        ray_cluster):
    """The test session's cluster is the other instance. Without the API server address
    handed to the workers, the State API in a worker fails with "Found multiple active Ray
    instances" and Ray Train never removes a stopped trial's placement groups."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", API_SERVER_ADDRESS_VAR)}
    with socket.socket() as held:                 # another instance holds the default port
        with contextlib.suppress(OSError):        # (or something already does)
            held.bind(("127.0.0.1", DASHBOARD_PORT))
            held.listen()
        out = subprocess.run([sys.executable, "-c", WORKER_STATE_QUERY], env=env, cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "WORKER SEES ['ALIVE']" in out.stdout
    (url,) = [line.split("dashboard on ")[1].rstrip(")") for line in out.stdout.splitlines()
              if "starting a local Ray cluster" in line]
    assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{DASHBOARD_PORT}")

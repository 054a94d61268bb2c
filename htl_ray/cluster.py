"""What a run needs from the cluster it joins, checked once Ray is up and before training.

On one node every path is shared. On several, a local `run.storage_path` would scatter the
run: Ray Train's checkpoints land on the node of rank 0, the HTL tables on the coordinator's
node, and a restarted worker, a restarted coordinator or `--resume` on another node would not
find them. So a multi-node run must put its storage (and its dataset, which Ray Data reads on
any node) on a filesystem every node mounts at the same path, and say so with
`run.shared_storage: true`. A SQLite MLflow store is a file on one node: metrics logged by
rank 0 on another node go to a different file, so that is warned about, not refused (a
single-GPU-node cluster with a CPU head is a common and working case for the driver's own
logging, and the user may have put the file on the shared filesystem deliberately).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from htl_ray.config import ConfigError, ExperimentConfig
from htl_ray.errors import first_line

logger = logging.getLogger(__name__)

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "abfs://", "az://", "hdfs://")
DASHBOARD_PORT = 8265                               # a local cluster's, unless it is taken
API_SERVER_ADDRESS_VAR = "RAY_API_SERVER_ADDRESS"   # read by the State API in every process


@dataclass(frozen=True)
class ClusterView:
    """The alive part of the cluster, as far as a run's placement is concerned."""

    nodes: int
    cpus: float
    gpus: float

    @property
    def multi_node(self) -> bool:
        return self.nodes > 1


def current_view() -> ClusterView:
    """The cluster this process is connected to (Ray must be initialised)."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return ClusterView(nodes=len(alive), cpus=float(resources.get("CPU", 0.0)),
                       gpus=float(resources.get("GPU", 0.0)))


def check_storage_uri(cfg: ExperimentConfig) -> None:
    """Object-store URIs are refused before anything starts: the run directory holds plain
    files (HTL tables, run state, reports) that this version reads and writes with local I/O."""
    for key, value in (("run.storage_path", cfg.run.storage_path), ("data.path", cfg.data.path)):
        if value.startswith(REMOTE_SCHEMES):
            raise ConfigError(
                f"{key}: object-store URIs ({value.split('://')[0]}://) are not supported; the "
                "run directory and dataset are plain files. On a multi-node cluster use a "
                "filesystem every node mounts at the same path (EFS, Filestore, NFS, Lustre — "
                "or a bucket mounted with mountpoint-s3 / gcsfuse) and set "
                "run.shared_storage=true")


def check_shared_storage(cfg: ExperimentConfig, view: ClusterView) -> None:
    """A multi-node run with storage not declared shared fails here, before training."""
    if not view.multi_node or cfg.run.shared_storage:
        return
    raise ConfigError(
        f"run.storage_path: this Ray cluster has {view.nodes} nodes, but "
        f"{cfg.run.storage_path!r} (and data.path {cfg.data.path!r}) is a local path that is "
        "not declared shared: checkpoints, HTL tables and the dataset would live on one node "
        "and workers, the refresh coordinator or --resume on another would not find them. "
        "Put both on a filesystem every node mounts at the same path (e.g. /mnt/shared on "
        "EFS/NFS, see cluster.yaml) and set run.shared_storage=true")


def uses_refresh(cfg: ExperimentConfig) -> bool:
    """Methods that rank samples need the refresh coordinator; erm and focal do not."""
    from htl_ray.htl.attention import METHODS

    return METHODS[cfg.htl.method].score_column is not None


def cpus_needed(cfg: ExperimentConfig) -> float:
    """CPUs a run holds while it trains: its workers, plus scorer actors when it refreshes."""
    need = cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("CPU", 1.0)
    if uses_refresh(cfg):
        need += cfg.htl.scorer_actors * cfg.htl.scorer_cpus
    return need


def gpus_needed(cfg: ExperimentConfig) -> float:
    """GPUs a run holds while it trains (Ray Train gives each worker 1 GPU unless told)."""
    need = 0.0
    if cfg.scaling.use_gpu:
        need += cfg.scaling.num_workers * cfg.scaling.resources_per_worker.get("GPU", 1.0)
    if uses_refresh(cfg):
        need += cfg.htl.scorer_actors * cfg.htl.scorer_gpus
    return need


def check_resources(cfg: ExperimentConfig, view: ClusterView) -> None:
    """Trainers (and scorer actors, when the method refreshes) must fit in the cluster
    together: Ray Train would otherwise wait for the workers' CPUs forever, retrying every
    minute, and a refresh would wait for CPUs the trainers hold."""
    cpus = view.cpus
    need = cpus_needed(cfg)
    if not uses_refresh(cfg) and need > cpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: {cfg.scaling.num_workers} workers × "
            f"{cfg.scaling.resources_per_worker.get('CPU', 1.0)} CPU = {need:g} CPUs, but the "
            f"Ray cluster has {cpus:g}; lower scaling.num_workers or "
            "scaling.resources_per_worker.CPU (fractions are fine)")
    if need > cpus + 1e-9:
        raise ConfigError(
            f"scaling/htl: {cfg.scaling.num_workers} workers × "
            f"{cfg.scaling.resources_per_worker.get('CPU', 1.0)} CPU + "
            f"{cfg.htl.scorer_actors} scorer actors × {cfg.htl.scorer_cpus} CPU = {need} CPUs, "
            f"but the cluster has {cpus}; lower scaling.resources_per_worker.CPU or "
            "htl.scorer_cpus (fractions are fine)")


def tracking_warnings(uri: str, view: ClusterView) -> list[str]:
    """Why this tracking store may lose metrics on this cluster (empty when it will not)."""
    from htl_ray.tracking import sqlite_path

    db = sqlite_path(uri)
    if db is None or not view.multi_node:
        return []
    return [f"MLflow store {uri} is a SQLite file, and this cluster has {view.nodes} nodes: "
            "rank 0 and the refresh coordinator log metrics from whichever node they run on, "
            "into a file of that name on that node. Run a tracking server on the head node, "
            f"e.g. `mlflow server --backend-store-uri sqlite:///{db} --host HEAD_PRIVATE_IP "
            "--port 5000`, and set tracking.uri=http://HEAD_PRIVATE_IP:5000 "
            "(or MLFLOW_TRACKING_URI)"]


def check_cluster(cfg: ExperimentConfig, uri: str, *,
                  view: ClusterView | None = None) -> ClusterView:
    """All cluster-dependent checks of a run (against the connected cluster unless `view` is
    given); refusals raise ConfigError, risks are logged as warnings. Returns the view."""
    view = view or current_view()
    check_shared_storage(cfg, view)
    check_resources(cfg, view)
    for message in tracking_warnings(uri, view):
        logger.warning(f"[htl-ray] WARNING: {message}")
    gpus = gpus_needed(cfg)
    if gpus > view.gpus + 1e-9:
        logger.warning(f"[htl-ray] WARNING: this run asks for {gpus:g} GPUs (trainers "
                       f"{'with' if cfg.scaling.use_gpu else 'without'} scaling.use_gpu, plus "
                       f"htl.scorer_gpus per scorer actor) but the cluster has {view.gpus:g} "
                       "now; it waits for the autoscaler to add GPU nodes (Ctrl-C to stop), or "
                       "set scaling.use_gpu=false and htl.scorer_gpus=0 to run on CPUs")
    return view


def init_ray() -> None:
    """Join RAY_ADDRESS (a cluster, or a `ray job submit` job) or start a local cluster.

    A local cluster gets the dashboard on 127.0.0.1 (8265, or a free port when another Ray
    instance holds it): Ray Train's placement-group cleaner polls actor state through it, and
    warns every few seconds without it."""
    import ray
    from ray.data import DataContext

    # Progress bars of many tiny Ray Data executions drown the per-epoch lines; the dataset
    # carries the driver's context to the workers.
    DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    from htl_ray.interrupts import reinstall_after_ray_init

    if address:
        logger.info(f"[htl-ray] connecting to Ray at {address}")
        check_ray_address(address)
        try:
            ray.init(address=address, configure_logging=False)
        except ConnectionError as exc:
            raise ConfigError(f"RAY_ADDRESS {address}: could not join the Ray cluster there "
                              f"({first_line(exc)}); fix RAY_ADDRESS, or unset it to run on a "
                              "local cluster") from None
    else:
        port = free_local_port(DASHBOARD_PORT)
        url = f"http://127.0.0.1:{port}"
        logger.info(f"[htl-ray] starting a local Ray cluster (dashboard on {url})")
        # Set before the raylet starts, so that every worker inherits it (and this process
        # keeps it while it drives this cluster). Without it, the State API in a worker (Ray
        # Train's placement-group cleaner) looks for "the" Ray instance on the machine and,
        # when another one runs (a second job, a test suite), fails with "Found multiple
        # active Ray instances": the placement groups of a stopped trial are then never
        # removed, and the CPUs they hold are lost to the rest of the run.
        os.environ[API_SERVER_ADDRESS_VAR] = url
        other = _cluster_on_this_machine()
        if other:
            logger.info(f"[htl-ray] note: a Ray cluster also runs on this machine ({other}); "
                        f"this run starts its own. To run on that one instead: "
                        f"RAY_ADDRESS={other}")
        # address="local": a new cluster of this process's own, even when a `ray start`
        # instance runs on the machine (a bare ray.init() would join that one instead)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, configure_logging=False)
    reinstall_after_ray_init()


def _cluster_on_this_machine() -> str | None:
    """The address of a `ray start` cluster on this machine, if one answers (Ray records the
    latest in its temp folder)."""
    import socket
    import tempfile
    from pathlib import Path

    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        address = record.read_text().strip()
        host, port = address.rsplit(":", 1)
        socket.create_connection((host, int(port)), timeout=1).close()
    except (OSError, ValueError):
        return None
    return address


def check_ray_address(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) RAY_ADDRESS must accept a connection within
    seconds: ray.init would otherwise retry for a minute before it says anything. Other forms
    (`auto`, `local`, an http job address) are left to Ray."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([\w.:-]+?)\]?:(\d+)", address.strip())
    if m is None:
        return
    try:
        socket.create_connection((m[1], int(m[2])), timeout=timeout_s).close()
    except OSError as exc:
        raise ConfigError(f"RAY_ADDRESS {address}: no Ray cluster answers there within "
                          f"{timeout_s:g} s ({exc.strerror or exc}); start one (`ray start "
                          "--head`), fix RAY_ADDRESS, or unset it to run on a local cluster") \
            from None


def free_local_port(preferred: int) -> int:
    """`preferred` if nothing listens on it on 127.0.0.1, else a port the OS says is free."""
    import socket

    for port in (preferred, 0):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


def join_cluster(cfg: ExperimentConfig, uri: str) -> ClusterView:
    """Everything a run or a sweep checks before it creates anything in MLflow: the tracking
    store answers, Ray is up (joined or started), and the cluster can hold the run."""
    from htl_ray import tracking

    tracking.check_reachable(uri)
    init_ray()
    return check_cluster(cfg, uri)

"""Shared fixtures: one real local Ray cluster per test session (num_cpus=2, its dashboard on
a free 127.0.0.1 port),
paths to the shared real data, and small synthetic datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from htl_ray.console import show_progress

show_progress()     # modules' progress lines reach stdout, where capsys reads them

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# Ray Train's controller collects reports and checks worker health every 2 s by default; tiny
# test runs wait on that poll at each epoch and at the end (the session cluster, started from
# this process, hands the setting to its workers). The shorter poll also makes a worker death
# before its last checkpoint is registered likelier, which resuming must survive.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

# The shared real data sits beside the project checkout; HTL_RAY_ISIC_DIR points elsewhere.
ISIC_DIR = Path(os.environ.get(
    "HTL_RAY_ISIC_DIR",
    Path(__file__).resolve().parents[1].parent / "shared" / "data" / "isic2018-task1-256"))


# `make test` runs the suite on two pytest-xdist workers (`--dist loadfile`: a module's tests,
# and its module-scoped fixtures, stay on one worker), each with its own session cluster; a
# free worker takes the next module in collection order. The longest modules go first, so
# that none of them is left running alone at the end.
SLOW_MODULES_FIRST = ("test_demo", "test_protocol_runner", "test_tune_sweep",
                      "test_htl_training", "test_supervision_settings", "test_cluster",
                      "test_tracking_outbox", "test_train_trainer", "test_predict",
                      "test_bad_input", "test_htl_scorer", "test_tune_search")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_MODULES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))     # stable: in-module
    #                                                                     order is kept


@pytest.fixture(scope="session")
def ray_cluster():
    import ray

    from htl_ray.cluster import API_SERVER_ADDRESS_VAR, DASHBOARD_PORT, free_local_port

    if not ray.is_initialized():
        # as `init_ray` does: the State API of this cluster's workers (Ray Train's
        # placement-group cleaner) must find *this* cluster's dashboard, not another Ray
        # instance running on the machine, which it would otherwise take for "the" one and
        # conclude that the Train controller is dead
        # under pytest-xdist each worker process has its own session cluster: start their
        # port searches apart, so two clusters starting at once do not pick the same one
        worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
        port = free_local_port(DASHBOARD_PORT + 17 + 40 * worker)
        os.environ[API_SERVER_ADDRESS_VAR] = f"http://127.0.0.1:{port}"
        ray.init(address="local", num_cpus=2, include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=port, configure_logging=False, log_to_driver=True)
    yield ray
    workers = started(pids_titled("ray::"))
    ray.shutdown()
    left = reap(workers)
    if left:                                        # in the warnings summary, not captured
        import warnings

        warnings.warn(f"killed {len(left)} Ray worker process(es) left running after the "
                      f"session cluster shut down: {left}", stacklevel=1)


@pytest.fixture(scope="session")
def isic_dir() -> Path:
    if not (ISIC_DIR / "ISIC2018_Task1-2_Training_Input").is_dir():
        pytest.skip(f"shared ISIC data not present at {ISIC_DIR} (optional real-data test)")
    return ISIC_DIR


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory) -> Path:
    """200 synthetic 48x48 images, shared by the training tests."""
    from htl_ray.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(out, n=200, size=48, seed=0)
    return out


@pytest.fixture(scope="session")
def _mlflow_store_template(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store, made once per session. Creating one runs MLflow's schema
    migrations: 4-9 s on 2 cores, paid again by every test that opened a new store."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def fresh_store(_mlflow_store_template):
    """fresh_store(path) -> URI of a new, empty MLflow store at `path`: a real SQLite store,
    copied from the session's template instead of migrated again."""
    import shutil

    def make(path: Path) -> str:
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_mlflow_store_template, path)
        return f"sqlite:///{path}"

    return make


@pytest.fixture
def tracking_uri(tmp_path, monkeypatch, fresh_store) -> str:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return fresh_store(tmp_path / "mlflow.db")


def processes() -> dict[int, tuple[int, str]]:
    """pid → (parent pid, command line) of this machine's processes, from /proc. Fault tests
    find Ray's workers by their process titles (`ray::RayTrainWorker`, ...) and kill them."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = _cmdline(int(entry))
        except OSError:
            continue
        out[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    return out


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
        errors="replace")


def descendants(root: int, procs: dict[int, tuple[int, str]]) -> set[int]:
    """PIDs below `root` in the process tree (not `root` itself)."""
    family, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - family
        family |= frontier
    return family


def pids_titled(title: str) -> list[int]:
    """PIDs whose command line contains `title`, oldest first — only among this pytest
    process's descendants (the session cluster's raylet and its workers): a fault test must
    never kill the workers of another Ray cluster on the machine, such as a long experiment."""
    procs = processes()
    return sorted(pid for pid in descendants(os.getpid(), procs)
                  if title in procs[pid][1] and "pytest" not in procs[pid][1])


def _stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks since boot) of a process, None once it is gone. The
    start time tells a process from a later one that reused its pid."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def started(pids) -> dict[int, str]:
    """pid → start time of the processes in `pids` that exist now."""
    return {pid: st[1] for pid in pids if (st := _stat(pid)) is not None}


def reap(pids: dict[int, str], grace_s: float = 10.0) -> dict[int, str]:
    """Waits `grace_s` for the processes of `pids` (pid → start time, from `started`) to exit,
    then SIGKILLs the ones still there — the same processes, not later ones that reused a
    pid; returns those (pid → command line). A Ray worker can outlive its cluster: once seen, a
    TrainController whose core worker had shut down hung in interpreter exit, re-parented to
    init with 1 GB, and every later CI run on the machine would have added another."""
    import signal
    import time

    def same_and_running(pid: int) -> bool:
        st = _stat(pid)
        return st is not None and st[0] != "Z" and st[1] == pids[pid]

    deadline = time.time() + grace_s
    while (alive := [pid for pid in pids if same_and_running(pid)]) \
            and time.time() < deadline:
        time.sleep(0.2)
    killed = {}
    for pid in alive:
        try:
            killed[pid] = _cmdline(pid)
            os.kill(pid, signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass
    return killed


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 that a test can stop (an outage) and start again on
    the same port and store."""

    def __init__(self, root: Path):
        from ports import unused_port

        self.port = unused_port()
        self.root = root
        self.store = f"sqlite:///{root / 'server.db'}"    # what the server writes, read directly
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout_s: float = 300.0) -> None:
        """Waits for `/health`: a loaded 2-core machine takes over 90 s to import the server.
        Fails at once, with the server's log, if the server exits (its port taken meanwhile)
        or something else answers on its port."""
        import http.client
        import subprocess
        import sys
        import time
        import urllib.request

        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--backend-store-uri", self.store,
             "--artifacts-destination", str(self.root / "artifacts"), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout_s
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2):
                    return
            except http.client.HTTPException as exc:      # not an HTTP server: not ours
                self.stop()
                raise RuntimeError(f"port {self.port} answers, but not as mlflow server: "
                                   f"{type(exc).__name__}") from exc
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server did not start on port {self.port}: "
                           f"{(self.root / 'server.log').read_text()[-4000:]}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)      # an outage, not a clean shutdown
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def _module_mlflow_server(tmp_path_factory):
    """One server per test module: importing `mlflow server` takes seconds on 2 cores."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def mlflow_server(_module_mlflow_server, monkeypatch):
    """The module's server, answering (a test that failed mid-outage may have left it down);
    tests of one module keep apart by experiment."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    if not _module_mlflow_server.running():
        _module_mlflow_server.start()
    return _module_mlflow_server

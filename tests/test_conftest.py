"""The fault tests' process finder only ever sees this test session's own processes; the
MLflow stores tests get are real, empty and independent."""

import os
import signal
import subprocess
import sys
import time

from conftest import pids_titled, processes, reap, started


def test_pids_titled_finds_descendants_and_never_another_process_tree():
    mine = subprocess.Popen(["sleep", "61.25"])
    # a process of another tree: its parent exits at once, so it is re-parented away from us
    subprocess.run([sys.executable, "-c",
                    "import subprocess; subprocess.Popen(['sleep', '62.25'])"], check=True)
    try:
        deadline = time.time() + 10
        while not any("sleep 62.25" in cmd for _, cmd in processes().values()):
            assert time.time() < deadline, "the orphan never appeared"
            time.sleep(0.05)
        assert pids_titled("sleep 61.25") == [mine.pid]
        assert pids_titled("sleep 62.25") == []
    finally:
        mine.kill()
        for pid, (_, cmd) in processes().items():
            if "sleep 62.25" in cmd:
                os.kill(pid, signal.SIGKILL)


def test_reap_kills_what_outlives_its_grace_and_leaves_what_exits():
    """A process that ignores SIGTERM (as a worker hung in interpreter exit does) is killed;
    one that exits by itself within the grace period is not reported; a pid whose recorded
    start time is not its process's (the pid was reused) is left alone."""
    stuck = subprocess.Popen([sys.executable, "-c",
                              "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
                              " print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    quick = subprocess.Popen(["sleep", "0.5"])
    stranger = subprocess.Popen(["sleep", "60.25"])
    try:
        assert stuck.stdout.readline().strip() == "ready"
        recorded = started([stuck.pid, quick.pid, stranger.pid])
        recorded[stranger.pid] = "0"                       # as if recorded for an older process
        left = reap(recorded, grace_s=2.0)
        assert list(left) == [stuck.pid] and "signal.SIG_IGN" in left[stuck.pid]
        assert stuck.wait(timeout=10) == -signal.SIGKILL
        assert quick.wait(timeout=10) == 0
        assert stranger.poll() is None                     # not ours: still running
    finally:
        stranger.kill()
        stuck.kill()
        stuck.stdout.close()


def test_fresh_stores_are_empty_independent_real_mlflow_stores(fresh_store, tmp_path):
    from mlflow.tracking import MlflowClient

    a, b = fresh_store(tmp_path / "a" / "mlflow.db"), fresh_store(tmp_path / "b.db")
    client_a = MlflowClient(a)
    exp = client_a.create_experiment("only-in-a")
    run = client_a.create_run(exp)
    client_a.log_metric(run.info.run_id, "m", 1.5)
    assert client_a.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    names = {e.name for e in MlflowClient(b).search_experiments()}
    assert names == {"Default"}                    # what a store made from nothing holds
    # and the next copy is empty again: the template itself was never written to
    again = MlflowClient(fresh_store(tmp_path / "c.db"))
    assert {e.name for e in again.search_experiments()} == {"Default"}

"""The fault tests' process finder only ever sees this test session's own processes."""

import os
import signal
import subprocess
import sys
import time

from conftest import pids_titled, processes


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

"""Progress lines: module loggers under htl_ray, printed plain where stdout is now."""

import io
import logging

from htl_ray.console import ROOT, show_progress


def test_progress_lines_reach_the_current_stdout_once_and_plain(capsys):
    show_progress()
    show_progress()                                  # twice: still one line per message
    logging.getLogger("htl_ray.some.module").info("[htl-ray] hello %s", "there")
    logging.getLogger("htl_ray.other").debug("not shown at INFO")
    logging.getLogger("elsewhere").info("not ours")
    assert capsys.readouterr().out == "[htl-ray] hello there\n"


def test_a_fixed_stream_and_a_prefix_tell_a_workers_lines_apart(capsys):
    stream = io.StringIO()
    try:
        show_progress(stream=stream, prefix="[trial 7%] ")
        logging.getLogger("htl_ray.train").warning("[htl-ray] warning: x")
        assert stream.getvalue() == "[trial 7%] [htl-ray] warning: x\n"
        assert capsys.readouterr().out == ""
    finally:
        show_progress()                              # back to the suite's setting
    ours = [h for h in logging.getLogger(ROOT).handlers if type(h).__name__ == "_CurrentStdout"]
    assert len(ours) == 1

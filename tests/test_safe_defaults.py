"""Safe defaults across the package: nothing unpickles user files, checkpoints load with
`weights_only=True`, no server is bound to every interface."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

from htl_ray.checkpoints import load_checkpoint
from htl_ray.run_dir import CHECKPOINT_FILE

PACKAGE = Path(__file__).resolve().parents[1] / "htl_ray"


class _Payload:
    """What a hostile checkpoint carries: unpickling it runs a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = tmp_path / "checkpoint_0"
    ckpt.mkdir()
    torch.save({"model": {}, "payload": _Payload(marker)}, ckpt / CHECKPOINT_FILE)
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        load_checkpoint(ckpt)
    assert not marker.exists()


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def test_no_unsafe_deserialisation_or_wildcard_binding_anywhere_in_the_package():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source)
        for call, name in _calls(tree):
            where = f"{path.relative_to(PACKAGE)}:{call.lineno} {name}"
            keywords = {k.arg: ast.unparse(k.value) for k in call.keywords}
            if name == "torch.load" and keywords.get("weights_only") != "True":
                problems.append(f"{where} without weights_only=True")
            if name in ("pickle.load", "pickle.loads", "pd.read_pickle", "yaml.load",
                        "yaml.unsafe_load", "eval", "exec", "marshal.loads"):
                problems.append(where)
            if name == "np.load" and keywords.get("allow_pickle") == "True":
                problems.append(f"{where} with allow_pickle=True")
        if "0.0.0.0" in source:
            problems.append(f"{path.relative_to(PACKAGE)} mentions 0.0.0.0")
    assert problems == []
    # and the checks see what they look for (a guard against an empty walk)
    assert sum(1 for p in PACKAGE.rglob("*.py")
               for _, n in _calls(ast.parse(p.read_text())) if n == "torch.load") >= 2

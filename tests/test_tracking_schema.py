"""The MLflow schema has one home: no module spells a tag name of its own."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "htl_ray"


def test_no_module_outside_the_schema_spells_an_htl_tag():
    """Every string that starts like a tag (`htl.<name>`, also inside an f-string) is either a
    config key (`htl.lam`, in messages and overrides) or the sweep's derived key; tag names
    come from htl_ray.tracking.schema."""
    from htl_ray.config import ExperimentConfig
    from htl_ray.tune.space import MAX_SPARSITY

    allowed = set(ExperimentConfig().flat()) | {MAX_SPARSITY}
    spelled = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).as_posix() == "tracking/schema.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                m = re.match(r"htl\.[a-z_]+", node.value)
                if m and m.group(0) not in allowed:
                    spelled.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert spelled == []
    # the walk sees what it looks for: the schema itself spells them
    schema = (PACKAGE / "tracking" / "schema.py").read_text()
    assert len(re.findall(r'"htl\.[a-z_.]+"', schema)) >= 20


def test_importing_the_schema_or_the_tracking_front_does_not_import_mlflow():
    """Ray workers and the CLI parser import tag names; MLflow (seconds) stays out until a
    store is used."""
    import subprocess
    import sys

    code = ("import sys; import htl_ray.tracking, htl_ray.tracking.schema, htl_ray.tune.trial; "
            "print('mlflow' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "False", done.stderr

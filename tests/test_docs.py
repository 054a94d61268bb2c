"""The documentation: the site builds without a warning, its generated reference names every
command, option, config key, MLflow name and directory written, the README stays a
newcomer's page, and no relative link in the Markdown points at nothing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from htl_ray import reference

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README_LIMIT = 12_000          # bytes: a newcomer's page, not a diary


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """`make docs`'s build (`mkdocs build --strict`) into a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    return done, out


def test_the_site_builds_with_no_warning_and_every_page_in_the_nav(site):
    done, out = site
    log = done.stdout + done.stderr
    assert done.returncode == 0, log
    assert [line for line in log.splitlines() if "WARNING" in line] == []
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    nav = (REPO / "mkdocs.yml").read_text()
    assert [p for p in pages if f": {p}" not in nav] == []
    for page in [*pages, *reference.PAGES]:
        assert (out / page).with_suffix(".html").is_file(), page
    # the reference in the site is the generated one, not the placeholder in the repository
    assert "htl-ray data ingest" in (out / "reference" / "cli.html").read_text()


def _section(page: str, heading: str) -> str:
    start = page.index(f"\n## {heading}\n")
    end = page.find("\n## ", start + 1)
    return page[start:end if end >= 0 else None]


def test_every_command_and_every_option_is_in_the_cli_reference():
    page = reference.cli_page()
    cmds = reference.commands()
    names = {" ".join(path) for path, _, _ in cmds}
    assert {"data ingest", "data synth", "train", "sync", "evaluate", "score", "predict",
            "register", "tune", "paired", "reproduce", "compare", "report", "demo"} <= names
    for path, _, parser in cmds:
        section = _section(page, "htl-ray " + " ".join(path))
        for action in reference.options(parser):
            names = action.option_strings or [(action.metavar or action.dest).upper()]
            for name in names:
                assert name in section, (path, name)
            assert action.help, f"htl-ray {' '.join(path)} {names[0]}: no help text"
            shown = reference._cell(reference._arg_help(parser, action))
            assert f"| {shown} |" in section, (path, action.dest)


def test_every_config_key_is_documented_with_its_meaning():
    from htl_ray.config import ExperimentConfig

    keys = reference.config_keys()
    documented = {k["key"] for k in keys}
    # flat() also opens mappings (scaling.resources_per_worker.CPU): their key is the parent
    flat = ExperimentConfig().flat()
    assert [k for k in flat if not any(k == d or k.startswith(d + ".") for d in documented)] \
        == []
    assert [k["key"] for k in keys if not k["help"].strip()] == []
    page = reference.config_page()
    for k in keys:
        assert f"`{k['key']}`" in page


def test_every_mlflow_tag_role_and_metric_has_a_meaning():
    assert [t for t in reference.tags() if not t[2]] == []
    assert [r for r in reference.roles() if not r[2]] == []
    from htl_ray.tracking.schema import METRICS

    assert "val/dice" in {m.replace("<metric>", "dice") for m in METRICS}
    page = reference.tracking_page()
    for _, value, _ in reference.tags() + reference.roles():
        assert f"`{value}`" in page


def test_every_directory_layout_is_described():
    found, missing = reference.layouts()
    assert {m for m, *_ in found} >= {"htl_ray.data.schema", "htl_ray.run_dir",
                                      "htl_ray.tune.state", "htl_ray.predict.runner"}
    optional = {m for m, _, _, opt in reference.LAYOUT_MODULES if opt}
    assert set(missing) <= optional
    for module, _, _, layout in found:
        assert layout and all(path and meaning for path, meaning in layout.items()), module


def test_every_module_that_defines_a_layout_is_in_the_reference():
    package = REPO / "htl_ray"
    defining = {".".join(path.relative_to(REPO).with_suffix("").parts)
                for path in package.rglob("*.py")
                if re.search(r"^LAYOUT\b", path.read_text(), flags=re.M)}
    assert defining - {m for m, *_ in reference.LAYOUT_MODULES} == set()


def test_the_readme_is_a_newcomers_page():
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= README_LIMIT
    first_block = text.split("```")[1]
    assert [line.split()[:2] for line in first_block.strip().splitlines()[1:]] == [
        ["make", "demo"], ["make", "test"]]


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _relative_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)   # code is not linked
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and
            not t.startswith("#")]


def test_every_relative_link_in_the_readme_and_the_docs_resolves():
    broken = []
    for md in [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for target in _relative_links(md):
            if not (md.parent / target.split("#")[0]).exists():
                broken.append(f"{md.relative_to(REPO)} → {target}")
    assert broken == []

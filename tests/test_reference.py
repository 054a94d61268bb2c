"""htl_ray.reference, by its parts: Markdown cells and code spans, commands and arguments read
from an argparse parser built here (names, what each takes, defaults, help), config keys read
from dataclasses built here (types, defaults, ranges, help), directory layouts (an optional
module not there yet listed, a required one refused, a broken one not hidden), and the module
table read from the source. tests/test_docs.py checks the pages against the real CLI, config
and schema."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from htl_ray import reference as ref

# ------------------------------------------------------------------ Markdown


def test_a_cell_is_one_line_with_pipes_tags_and_stars_taken_literally():
    assert ref._cell("a | b <id> *x*\n   next") == "a \\| b &lt;id> \\*x\\* next"
    # code spans are literal already: left as they are
    assert ref._cell("use `a|b <c> *d*` here") == "use `a|b <c> *d*` here"
    assert ref._cell(3.5) == "3.5"


def test_a_code_span_survives_a_backtick_inside():
    assert ref._code("plain") == "`plain`"
    assert ref._code("x`y") == "`` x`y ``"
    assert ref._code(256) == "`256`"


# ------------------------------------------------------------------ CLI


@pytest.fixture
def parser():
    p = argparse.ArgumentParser(prog="tool")
    sub = p.add_subparsers(dest="cmd")
    data = sub.add_parser("data", help="dataset commands, 100%% local")
    ingest = data.add_subparsers(dest="sub").add_parser("ingest", help="read a folder")
    ingest.add_argument("src", help="the source folder")
    ingest.add_argument("--size", type=int, default=256, help="pixels (default %(default)s)")
    ingest.add_argument("--layout", choices=["isic", "folder"], required=True, help="layout")
    ingest.add_argument("--all-test", action="store_true", help="every record in test")
    ingest.add_argument("--tags", nargs="+", help="tags")
    ingest.add_argument("--ids", nargs="*", default=["a", "b"], metavar="ID", help="ids")
    ingest.add_argument("--ratio", type=float, default=0.5, help="100% sure %(nokey)s")
    ingest.add_argument("out", nargs="?", help="where")
    sub.add_parser("train", help="train a model")
    return p


def test_commands_are_listed_depth_first_with_their_help(parser):
    found = [(path, help_) for path, help_, _ in ref.commands(parser)]
    assert found == [(("data",), "dataset commands, 100% local"),
                     (("data", "ingest"), "read a folder"), (("train",), "train a model")]


def test_options_leave_out_help_and_the_subcommand_selector(parser):
    cmds = {path: sub for path, _, sub in ref.commands(parser)}
    assert ref.options(cmds[("data",)]) == []
    assert [a.dest for a in ref.options(cmds[("data", "ingest")])] == [
        "src", "size", "layout", "all_test", "tags", "ids", "ratio", "out"]


def test_each_argument_is_described_by_name_value_default_and_help(parser):
    ingest = dict((path, sub) for path, _, sub in ref.commands(parser))[("data", "ingest")]
    rows = {a.dest: (ref._arg_name(a), ref._arg_value(a), ref._arg_default(a),
                     ref._arg_help(ingest, a)) for a in ref.options(ingest)}
    assert rows == {
        "src": ("SRC", "text", "required", "the source folder"),
        "size": ("--size", "`SIZE` (integer)", "`256`", "pixels (default 256)"),
        "layout": ("--layout", "`isic` \\| `folder`", "required", "layout"),
        "all_test": ("--all-test", "flag", "—", "every record in test"),
        "tags": ("--tags", "`TAGS` one or more", "—", "tags"),
        "ids": ("--ids", "`ID` any number", "`a,b`", "ids"),
        # a help text argparse cannot expand is shown as written
        "ratio": ("--ratio", "`RATIO` (number)", "`0.5`", "100% sure %(nokey)s"),
        "out": ("OUT", "text", "—", "where"),
    }


# ------------------------------------------------------------------ config


@dataclass
class _Inner:
    rate: float = field(default=0.1, metadata={"help": "the rate", "lo": 0, "lo_open": True})
    names: list[str] = field(default_factory=lambda: ["a", "b"], metadata={"help": "names"})


@dataclass
class _Outer:
    """A section."""

    inner: _Inner = field(default_factory=_Inner)
    mode: str = field(default="x", metadata={"choices": ("x", "y"), "help": "the mode"})
    fraction: float = field(default=0.5, metadata={"lo": 0, "hi": 1, "hi_open": True})
    note: str | None = None


def test_config_keys_are_the_dataclass_leaves_with_type_default_range_and_help():
    keys = [{k: v for k, v in entry.items() if k != "section"}
            for entry in ref.config_keys(_Outer, "sec.")]
    assert keys == [
        {"key": "sec.inner.rate", "type": "float", "default": 0.1, "allowed": "> 0",
         "help": "the rate"},
        {"key": "sec.inner.names", "type": "list[str]", "default": ["a", "b"], "allowed": "",
         "help": "names"},
        {"key": "sec.mode", "type": "str", "default": "x", "allowed": "`x` \\| `y`",
         "help": "the mode"},
        {"key": "sec.fraction", "type": "float", "default": 0.5, "allowed": "[0, 1)",
         "help": ""},
        {"key": "sec.note", "type": "str | None", "default": None, "allowed": "", "help": ""},
    ]
    assert [e["section"] for e in ref.config_keys(_Outer)] == [_Inner, _Inner, _Outer, _Outer,
                                                              _Outer]


def test_ranges_and_yaml_values_are_written_as_a_reader_types_them():
    assert ref._range_text({"lo": 1}) == "≥ 1"
    assert ref._range_text({"hi": 2, "hi_open": True}) == "< 2"
    assert ref._range_text({"lo": 0, "hi": 1, "lo_open": True}) == "(0, 1]"
    assert ref._range_text({"lo": 1e-4, "hi": 0.5}) == "[0.0001, 0.5]"
    assert ref._range_text({}) == ""
    assert [ref._yaml_value(v) for v in (None, True, 0.001, "s", [1, 2], {"CPU": 1})] == [
        "null", "true", "0.001", "s", "[1, 2]", "{CPU: 1}"]


# ------------------------------------------------------------------ directory layouts


def test_layouts_leave_out_an_optional_module_not_there_yet(monkeypatch):
    monkeypatch.setattr(ref, "LAYOUT_MODULES", (
        ("htl_ray.data.schema", "Dataset folder", "written by `ingest`", False),
        ("htl_ray.no_such_module", "Future folder", "written later", True),
        ("htl_ray.errors", "No layout yet", "written by nothing", True),
    ))
    found, missing = ref.layouts()
    from htl_ray.data.schema import LAYOUT

    assert [(m, h, w) for m, h, w, _ in found] == [("htl_ray.data.schema", "Dataset folder",
                                                    "written by `ingest`")]
    assert found[0][3] == LAYOUT
    assert missing == ["htl_ray.no_such_module", "htl_ray.errors"]
    page = ref.layouts_page()
    assert "## Dataset folder\n\nWritten by `ingest`. Defined in `htl_ray.data.schema`." in page
    assert "| `records.parquet` | one row per usable image" in page
    assert "| `quarantine/<reason>/` |" in page
    assert page.rstrip().endswith("define no `LAYOUT` yet: `htl_ray.no_such_module`, "
                                  "`htl_ray.errors`.")


def test_a_required_layout_must_be_there_and_a_broken_module_is_not_hidden(monkeypatch,
                                                                           tmp_path):
    monkeypatch.setattr(ref, "LAYOUT_MODULES", (("htl_ray.errors", "x", "y", False),))
    with pytest.raises(AttributeError, match="^htl_ray.errors defines no LAYOUT$"):
        ref.layouts()
    monkeypatch.setattr(ref, "LAYOUT_MODULES", (("htl_ray.no_such_module", "x", "y", False),))
    with pytest.raises(ModuleNotFoundError):
        ref.layouts()
    # optional, but there and failing on an import of its own: an error, not "not yet there"
    (tmp_path / "htl_probe_layout.py").write_text("import no_such_dependency_of_a_layout\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(ref, "LAYOUT_MODULES", (("htl_probe_layout", "x", "y", True),))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_of_a_layout"):
        ref.layouts()


# ------------------------------------------------------------------ modules


def test_every_module_is_listed_with_the_first_paragraph_of_its_docstring():
    package = Path(ref.__file__).resolve().parent
    listed = dict(ref.modules())
    assert len(listed) == len(list(package.rglob("*.py")))
    assert {"htl_ray", "htl_ray.data", "htl_ray.data.images", "htl_ray.tune.roles",
            "htl_ray.reference"} <= set(listed)
    errors = listed["htl_ray.errors"]
    assert errors.startswith("The one type of error a user can fix: the command line prints")
    assert "\n" not in errors and "subclasses ValueError" not in errors   # first paragraph only
    page = ref.modules_page()
    assert f"| `htl_ray.errors` | {ref._cell(errors)} |" in page
    assert page.count("\n| `htl_ray") == len(listed)

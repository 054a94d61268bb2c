"""The reference pages of the documentation, generated from the code when the site is built.

- every command of `htl-ray`, from the argparse parser (`htl_ray.cli.build_parser`);
- every config key, from the dataclasses of `htl_ray.config` (type, default, allowed values
  and the `help` metadata of each field);
- every MLflow tag, role and metric name, from `htl_ray.tracking.schema`;
- every directory htl-ray writes, from the `LAYOUT` dict of the module that owns it;
- every module of the package, with the first paragraph of its docstring.

`docs/hooks.py` adds these pages to the MkDocs build (`make docs`); nothing here is written
to the repository. Imports are light: the parser, the config and the schema do not import
torch, Ray or MLflow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import re
import typing
from typing import Any

# Modules that own a directory, with a module-level `LAYOUT: dict[str, str]` (relative path →
# what it holds): (module, page heading, which command writes it). A module listed as
# optional may not exist yet (the layout is being reorganised); it is then left out, named.
LAYOUT_MODULES: tuple[tuple[str, str, str, bool], ...] = (
    ("htl_ray.data.schema", "Dataset folder",
     "written by `htl-ray data ingest` and `htl-ray data synth` (`--out`); read by every "
     "command through `data.path` or a DATA argument", False),
    ("htl_ray.run_dir", "Run directory",
     "written by `htl-ray train` at `run.storage_path/run.name`; read by `--resume`, "
     "`evaluate`, `report`, `predict`, `register`, `sync`", False),
    ("htl_ray.tune.state", "Sweep directory",
     "written by `htl-ray tune` and `htl-ray reproduce` at `sweep.storage_path/sweep.name`",
     False),
    ("htl_ray.predict.runner", "Prediction folder",
     "written by `htl-ray predict --out`", False),
)

PAGES = ("reference/cli.md", "reference/config.md", "reference/tracking.md",
         "reference/layouts.md", "reference/modules.md")


# ---------------------------------------------------------------- helpers

def _cell(text: Any) -> str:
    """Text fit for one Markdown table cell: one line, and `|`, `<` (`<id>` would be taken
    for an HTML tag) and `*` taken literally (code spans are literal already)."""
    parts = re.split(r"(`[^`]*`)", " ".join(str(text).split()))
    return "".join(part if part.startswith("`") else
                   part.replace("|", "\\|").replace("<", "&lt;").replace("*", "\\*")
                   for part in parts)


def _code(text: Any) -> str:
    s = str(text)
    tick = "``" if "`" in s else "`"
    pad = " " if tick == "``" else ""
    return f"{tick}{pad}{s}{pad}{tick}"


# ---------------------------------------------------------------- CLI

def commands(parser: argparse.ArgumentParser | None = None,
             prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], str,
                                                          argparse.ArgumentParser]]:
    """Every (sub)command as (path, help, parser), depth first in the parser's order."""
    if parser is None:
        from htl_ray.cli import build_parser

        parser = build_parser()
    out = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {a.dest: (a.help or "").replace("%%", "%") for a in action._choices_actions}
        for name, sub in action.choices.items():
            path = (*prefix, name)
            out.append((path, helps.get(name, ""), sub))
            out.extend(commands(sub, path))
    return out


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's arguments, without -h/--help and the subcommand selector."""
    return [a for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _arg_name(action: argparse.Action) -> str:
    if action.option_strings:
        return ", ".join(action.option_strings)
    return (action.metavar or action.dest).upper()


def _arg_value(action: argparse.Action) -> str:
    """What the argument takes: a flag, a choice, a metavar, a list."""
    if action.nargs == 0:
        return "flag"
    if action.choices:
        return " \\| ".join(_code(c) for c in action.choices)
    meta = action.metavar or (action.dest.upper() if action.option_strings else "")
    typ = getattr(action.type, "__name__", "")
    typ = {"int": "integer", "float": "number", "str": "text", "_positive_int": "integer ≥ 1",
           }.get(typ, typ.lstrip("_").replace("_", " "))
    text = _code(meta) if meta else ""
    if typ and typ != "text":
        text = f"{text} ({typ})" if text else typ
    if action.nargs in ("*", "+"):
        text = ((text + " ") if text else "") + ("one or more" if action.nargs == "+"
                                                  else "any number")
    return text or "text"


def _arg_default(action: argparse.Action) -> str:
    if not action.option_strings:           # a positional: required unless ? or *
        return "—" if action.nargs in ("?", "*") else "required"
    if action.required:
        return "required"
    default = action.default
    if action.nargs == 0 or default is None or default is argparse.SUPPRESS \
            or default is False:
        return "—"
    if isinstance(default, (list, tuple)):
        return _code(",".join(str(v) for v in default)) if default else "—"
    return _code(default)


def _arg_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    try:
        return parser._get_formatter()._expand_help(action)
    except (KeyError, TypeError, ValueError):
        return action.help


def cli_page() -> str:
    from htl_ray.cli import build_parser

    root = build_parser()
    lines = ["# CLI reference", "",
             "Generated from the argument parser (`htl_ray.cli.build_parser`) when this site is "
             "built: every command of `htl-ray`, every argument, its default and its help. "
             "`htl-ray COMMAND --help` prints the same. A mistake on the command line is one "
             "`error:` line and exit status 2; see [reliability](../reliability.md).", "",
             "```text", " ".join(root.format_usage().removeprefix("usage: ").split()), "```",
             "",
             "| command | what it does |", "|---|---|"]
    cmds = commands(root)
    for path, help_, _ in cmds:
        anchor = "htl-ray-" + "-".join(path)
        lines.append(f"| [{_code('htl-ray ' + ' '.join(path))}](#{anchor}) | {_cell(help_)} |")
    lines.append("")
    for path, help_, parser in cmds:
        name = "htl-ray " + " ".join(path)
        lines += [f"## {name}", ""]
        if help_:
            lines += [help_[0].upper() + help_[1:] + ("" if help_.endswith(".") else "."), ""]
        usage = parser.format_usage().strip().removeprefix("usage: ")
        lines += ["```text", " ".join(usage.split()), "```", ""]
        acts = options(parser)
        if not acts:
            lines += ["(subcommands only: see below)", ""]
            continue
        lines += ["| argument | takes | default | meaning |", "|---|---|---|---|"]
        for a in acts:
            lines.append(f"| {_code(_arg_name(a))} | {_arg_value(a)} | {_arg_default(a)} | "
                         f"{_cell(_arg_help(parser, a))} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- config

def _type_text(tp: Any) -> str:
    text = str(tp) if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))
    return text.replace("typing.", "").replace("NoneType", "None")


def _range_text(meta: dict[str, Any]) -> str:
    if meta.get("choices"):
        return " \\| ".join(_code(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        left = "(" if meta.get("lo_open") else "["
        right = ")" if meta.get("hi_open") else "]"
        return f"{left}{lo:g}, {hi:g}{right}"
    if lo is not None:
        return f"{'>' if meta.get('lo_open') else '≥'} {lo:g}"
    if hi is not None:
        return f"{'<' if meta.get('hi_open') else '≤'} {hi:g}"
    return ""


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def config_keys(cls: type | None = None, prefix: str = "") -> list[dict[str, Any]]:
    """Every leaf key of the config: dotted name, type, default, allowed values, help, and the
    section (class) it belongs to."""
    from htl_ray.config import ExperimentConfig

    cls = cls or ExperimentConfig
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(config_keys(tp, f"{prefix}{f.name}."))
            continue
        meta = dict(f.metadata)
        out.append({"key": f"{prefix}{f.name}", "type": _type_text(tp),
                    "default": _default_of(f), "allowed": _range_text(meta),
                    "help": meta.get("help", ""), "section": cls})
    return out


def _yaml_value(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix(
        "\n...").removesuffix(" ...")


def config_page() -> str:
    from htl_ray import config
    from htl_ray.config import ExperimentConfig

    lines = ["# Config reference", "",
             "Generated from the dataclasses of `htl_ray/config.py` when this site is built: "
             "every key an experiment YAML (or a `dotted.key=value` override) may set, with "
             "its type, default, allowed values and meaning. The config is validated before "
             "Ray starts: an unknown key, a wrong type or a value out of range is one "
             "`error:` line naming the key. How a run uses them: "
             "[training](../guides/training.md), [HTL attention](../guides/htl-attention.md), "
             "[supervision settings](../guides/supervision.md).", "",
             "Ranges: `[a, b]` includes both ends, `(a, b]` excludes a; `≥ a`, `> a` likewise. "
             "A value of `null` in YAML is `None`.", ""]
    neutral = ", ".join(_code(k) for k in config.RESULT_NEUTRAL_KEYS)
    lines += ["Keys that change how fast or how robustly a run goes, never what it trains "
              f"(`RESULT_NEUTRAL_KEYS`): {neutral}. A run may be resumed with other values "
              "of them, and `htl-ray compare` counts runs that differ only in them as seeds "
              "of one configuration.", "",
              "Checked across keys: `htl.sparsities` holds at least one value, each in (0, 1) "
              "and listed once; `supervision.setting: semi` needs "
              "`supervision.label_fraction` < 1 and `htl.gt_aware: false`; "
              "`supervision.setting: weak` needs `supervision.label_fraction: 1`; "
              "`htl.method: focal` sets `train.loss: focal_dice`.", ""]
    hints = typing.get_type_hints(ExperimentConfig)
    for section in dataclasses.fields(ExperimentConfig):
        cls = hints[section.name]
        lines += [f"## {section.name}", ""]
        doc = (cls.__doc__ or "").strip()
        if doc and not doc.startswith(cls.__name__ + "("):
            lines += [" ".join(doc.split()), ""]
        lines += ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
        for k in config_keys(cls, f"{section.name}."):
            lines.append(f"| {_code(k['key'])} | {_cell(k['type'])} | "
                         f"{_code(_yaml_value(k['default']))} | {k['allowed']} | "
                         f"{_cell(k['help'])} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------- MLflow names

def tags() -> list[tuple[str, str, str]]:
    """(constant, tag or prefix, meaning) of every tag the schema defines."""
    from htl_ray.tracking import schema

    meanings = getattr(schema, "TAG_MEANINGS", {})
    out = []
    for name, value in vars(schema).items():
        if name.isupper() and isinstance(value, str) and (
                name.endswith("_TAG") or name.endswith("_PREFIX")):
            out.append((name, value, meanings.get(value, "")))
    return out


def roles() -> list[tuple[str, str, str]]:
    from htl_ray.tracking import schema

    meanings = getattr(schema, "ROLE_MEANINGS", {})
    return [(name, value, meanings.get(value, "")) for name, value in vars(schema).items()
            if name.isupper() and name.endswith("_ROLE") and isinstance(value, str)]


def tracking_page() -> str:
    from htl_ray.tracking import schema

    lines = ["# MLflow names: tags, roles, metrics", "",
             "Generated from `htl_ray/tracking/schema.py` when this site is built. MLflow is "
             "the project's shared database: every run's **params** are its whole config, "
             "flattened to dotted keys (the [config reference](config.md)); its **tags** and "
             "**metrics** are named below. How runs are tracked, and what happens when the "
             "tracking server is down: [training](../guides/training.md#tracking-with-mlflow).",
             "", "## Tags", "",
             "A name ending in `.` is a prefix: the rest of the tag name says what it is of.",
             "", "| tag | constant | meaning |", "|---|---|---|"]
    for name, value, meaning in tags():
        lines.append(f"| {_code(value)} | {_code(name)} | {_cell(meaning)} |")
    lines += ["", "## Roles", "",
              f"Values of the {_code(schema.ROLE_TAG)} tag, which says what a run of a sweep "
              "is.", "", "| role | constant | meaning |", "|---|---|---|"]
    for name, value, meaning in roles():
        lines.append(f"| {_code(value)} | {_code(name)} | {_cell(meaning)} |")
    lines += ["", "## Metrics", "",
              "Names in angle brackets stand for a family: `<metric>` is one of "
              + ", ".join(_code(m) for m in _metric_names())
              + " (per image, mean over images; see [training](../guides/training.md"
              "#metrics-how-they-are-computed)); `<attribute>` a grouping attribute "
              "(age bin, sex, site, diagnosis, lesion-size and contrast quartile) and `<group>` "
              "one of its groups. The step of an epoch's metric is the epoch; of a refresh's, "
              "the HTL version; of a run's summary, 0.", "",
              "| metric | meaning |", "|---|---|"]
    for name, meaning in getattr(schema, "METRICS", {}).items():
        lines.append(f"| {_code(name)} | {_cell(meaning)} |")
    lines.append("")
    return "\n".join(lines)


def _metric_names() -> tuple[str, ...]:
    from htl_ray.metrics import METRIC_NAMES

    return METRIC_NAMES


# ---------------------------------------------------------------- directory layouts

def layouts() -> tuple[list[tuple[str, str, str, dict[str, str]]], list[str]]:
    """([(module, heading, written by, LAYOUT)], [optional modules not there yet])."""
    found, missing = [], []
    for module, heading, writer, optional in LAYOUT_MODULES:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if optional and exc.name is not None and module.startswith(exc.name):
                missing.append(module)
                continue
            raise
        layout = getattr(mod, "LAYOUT", None)
        if layout is None:
            if optional:
                missing.append(module)
                continue
            raise AttributeError(f"{module} defines no LAYOUT")
        found.append((module, heading, writer, dict(layout)))
    return found, missing


def layouts_page() -> str:
    found, missing = layouts()
    lines = ["# Directory layouts", "",
             "Generated when this site is built from the `LAYOUT` dict of each module that "
             "owns a directory: every file and folder htl-ray writes there, and what it "
             "holds. `<…>` stands for a name that varies.", ""]
    for module, heading, writer, layout in found:
        lines += [f"## {heading}", "", f"{writer[0].upper()}{writer[1:]}. "
                  f"Defined in `{module}`.", "", "| path | what it holds |", "|---|---|"]
        for path, meaning in layout.items():
            lines.append(f"| {_code(path)} | {_cell(meaning)} |")
        lines.append("")
    if missing:
        lines += ["## Not yet described", "",
                  "These modules are being reorganised and define no `LAYOUT` yet: "
                  + ", ".join(f"`{m}`" for m in missing) + ".", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- modules

def modules() -> list[tuple[str, str]]:
    """(module, first sentence of its docstring) of every module of the package, read from
    the source (nothing is imported)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent
    out = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = " ".join(doc.split("\n\n")[0].split())
        out.append((name, first))
    return out


def modules_page() -> str:
    lines = ["# Modules", "",
             "Generated from the source when this site is built: every module of the "
             "`htl_ray` package with the first paragraph of its docstring. How they fit "
             "together: [architecture](../design/architecture.md).", "",
             "| module | what it is |", "|---|---|"]
    for name, first in modules():
        lines.append(f"| {_code(name)} | {_cell(first)} |")
    lines.append("")
    return "\n".join(lines)


def pages() -> dict[str, str]:
    """{path under docs/: Markdown} of every generated page."""
    return {"reference/cli.md": cli_page(), "reference/config.md": config_page(),
            "reference/tracking.md": tracking_page(), "reference/layouts.md": layouts_page(),
            "reference/modules.md": modules_page()}

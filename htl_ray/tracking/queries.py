"""Typed searches of MLflow runs, instead of filter strings built by hand.

`RunQuery` says which runs are wanted in the project's own terms (a sweep, a role, a parent run,
a trial, a method group, a status, params); the tag names come from `schema`. It renders
MLflow's filter string (`filter_string`) with every key in backticks (tag and param names hold
dots) and every value quoted so that MLflow reads back the same value, and it can check a run
itself (`matches`). `search` returns exactly the matching runs, every page of them.

MLflow's filter grammar has no escapes: it only strips a value's outer quotes. A value holding
a single quote is therefore written in double quotes; one that holds both kinds of quote or a
backslash (which the SQL tokenizer may read as an escape) cannot be written at all, so its
clause is left out of the filter string and `search` checks it on the runs returned instead.
The filter string alone may thus match more runs than the query; `search` never does.

No MLflow import at module level: the query is plain data, tested as a table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from htl_ray.tracking.schema import (
    GROUP_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)

# MLflow's run statuses (mlflow.entities.RunStatus), spelled as a filter compares them
STATUSES = ("RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED")
# the largest page MLflow's stores and REST API return from one search
_PAGE = 50_000


def quote(value: str) -> str | None:
    """`value` as a quoted literal of MLflow's filter grammar that it reads back unchanged, or
    None when no such literal exists (see the module's docstring)."""
    if "\\" in value:
        return None
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _key(key: str) -> str:
    if "`" in key:
        raise ValueError(f"an MLflow key cannot hold a backtick in a filter: {key!r}")
    return f"`{key}`"


@dataclass(frozen=True)
class RunQuery:
    """Runs whose every given field matches exactly (None: any). `tags` and `params` add
    further exact matches (tag names from `htl_ray.tracking.schema`); values are compared as
    strings, as MLflow stores them."""

    sweep: str | None = None            # SWEEP_TAG: the sweep's name
    role: str | None = None             # ROLE_TAG: schema's *_ROLE
    parent_run_id: str | None = None    # PARENT_TAG: a sweep's parent run
    trial_id: str | None = None         # TRIAL_TAG: Tune's trial id
    group: str | None = None            # GROUP_TAG: a confirmation run's method group
    status: str | None = None           # one of STATUSES
    tags: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in STATUSES:
            raise ValueError(f"status {self.status!r} is not one of {STATUSES}")
        # private copies with values as MLflow stores them: the query cannot change later
        object.__setattr__(self, "tags", {k: str(v) for k, v in self.tags.items()})
        object.__setattr__(self, "params", {k: str(v) for k, v in self.params.items()})

    def tag_values(self) -> dict[str, str]:
        """Every tag the query asks for → its value."""
        named = {SWEEP_TAG: self.sweep, ROLE_TAG: self.role, PARENT_TAG: self.parent_run_id,
                 TRIAL_TAG: self.trial_id, GROUP_TAG: self.group}
        out = {k: str(v) for k, v in named.items() if v is not None}
        for k, v in self.tags.items():
            if out.setdefault(k, v) != v:
                raise ValueError(f"tag {k!r} asked for twice with different values")
        return out

    def _clauses(self) -> Iterable[tuple[str, str, str]]:
        if self.status is not None:
            yield "attributes", "status", self.status
        for k, v in self.tag_values().items():
            yield "tags", k, v
        for k, v in self.params.items():
            yield "params", k, v

    def filter_string(self) -> str:
        """MLflow's filter for the query (every clause it can express: see the module)."""
        parts = []
        for kind, key, value in self._clauses():
            literal = quote(value)
            if literal is not None:
                parts.append(f"{kind}.{_key(key)} = {literal}")
        return " and ".join(parts)

    def exact(self) -> bool:
        """Whether `filter_string` says all of the query (no value it cannot quote)."""
        return all(quote(v) is not None for _, _, v in self._clauses())

    def matches(self, run) -> bool:
        """Whether an MLflow run (anything with .info.status, .data.tags, .data.params)
        matches the query."""
        if self.status is not None and run.info.status != self.status:
            return False
        tags, params = run.data.tags, run.data.params
        return (all(tags.get(k) == v for k, v in self.tag_values().items())
                and all(params.get(k) == v for k, v in self.params.items()))


def search(client, experiment_ids: str | Iterable[str], query: RunQuery, *,
           max_results: int | None = None, order_by: list[str] | None = None,
           user_filter: str = "") -> list:
    """The runs of `experiment_ids` that match `query` exactly, in MLflow's order (newest
    first unless `order_by`), all of them (every page) or the first `max_results`.
    `user_filter` is an MLflow filter string a user gave (`htl-ray compare --filter`), added
    as it is: MLflow reports its mistakes."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    filter_string, exact = query.filter_string(), query.exact()
    if user_filter.strip():
        filter_string = " and ".join(p for p in (filter_string, user_filter.strip()) if p)
    out: list = []
    token = None
    while max_results is None or len(out) < max_results:
        want = _PAGE if max_results is None or not exact else min(_PAGE, max_results - len(out))
        page = client.search_runs(ids, filter_string, max_results=want, order_by=order_by,
                                  page_token=token)
        out += page if exact else [r for r in page if query.matches(r)]
        token = page.token
        if not token:
            break
    return out if max_results is None else out[:max_results]

"""Typed MLflow queries: the filter strings they render, as tables read back by MLflow's own
parser (no Ray, no server), and one search of a real SQLite store whose values hold quotes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from mlflow.utils.search_utils import SearchUtils

from htl_ray.tracking.queries import RunQuery, quote, search
from htl_ray.tracking.schema import (
    GROUP_TAG,
    ORIGIN_TAG,
    PARENT_TAG,
    ROLE_TAG,
    SWEEP_TAG,
    TRIAL_TAG,
)


def _parsed(query: RunQuery) -> list[tuple[str, str, str]]:
    return [(c["type"], c["key"], c["value"])
            for c in SearchUtils.parse_search_filter(query.filter_string())]


@pytest.mark.parametrize(("query", "clauses"), [
    (RunQuery(), []),
    (RunQuery(sweep="s1"), [("tag", SWEEP_TAG, "s1")]),
    (RunQuery(status="FINISHED", sweep="s", role="confirm", group="erm", parent_run_id="p",
              params={"run.seed": 3}),
     [("attribute", "status", "FINISHED"), ("tag", SWEEP_TAG, "s"), ("tag", ROLE_TAG, "confirm"),
      ("tag", PARENT_TAG, "p"), ("tag", GROUP_TAG, "erm"), ("parameter", "run.seed", "3")]),
    (RunQuery(parent_run_id="p", status="RUNNING", trial_id="t_1"),
     [("attribute", "status", "RUNNING"), ("tag", PARENT_TAG, "p"), ("tag", TRIAL_TAG, "t_1")]),
    (RunQuery(tags={ORIGIN_TAG: "abc"}), [("tag", ORIGIN_TAG, "abc")]),
    (RunQuery(sweep="it's"), [("tag", SWEEP_TAG, "it's")]),
    (RunQuery(sweep='say "hi"'), [("tag", SWEEP_TAG, 'say "hi"')]),
    (RunQuery(sweep="a -- b; c = 'd' or 1=1"), [("tag", SWEEP_TAG, "a -- b; c = 'd' or 1=1")]),
    (RunQuery(sweep="x and tags.y = 'z'", role="trial"),
     [("tag", SWEEP_TAG, "x and tags.y = 'z'"), ("tag", ROLE_TAG, "trial")]),
    (RunQuery(sweep="%_`*", role=""), [("tag", SWEEP_TAG, "%_`*"), ("tag", ROLE_TAG, "")]),
    # not expressible (both quotes, a backslash): left to `search` to check, the rest kept
    (RunQuery(sweep="it's \"x\"", role="trial"), [("tag", ROLE_TAG, "trial")]),
    (RunQuery(sweep="a\\", role="trial"), [("tag", ROLE_TAG, "trial")]),
    (RunQuery(sweep="a\\'b"), []),
])
def test_mlflow_reads_back_exactly_the_values_of_the_query(query, clauses):
    assert _parsed(query) == clauses
    assert query.exact() == (len(clauses) == len(list(query._clauses())))


@pytest.mark.parametrize(("value", "literal"), [
    ("plain", "'plain'"), ("it's", '"it\'s"'), ('"q"', "'\"q\"'"), ("", "''"),
    ("both ' \"", None), ("back\\slash", None),
])
def test_quote(value, literal):
    assert quote(value) == literal


def test_a_key_with_a_backtick_or_a_bad_status_is_a_bug():
    with pytest.raises(ValueError, match="backtick"):
        RunQuery(params={"a`b": 1}).filter_string()
    with pytest.raises(ValueError, match="status"):
        RunQuery(status="DONE")
    with pytest.raises(ValueError, match="twice"):
        RunQuery(sweep="a", tags={SWEEP_TAG: "b"}).tag_values()


def _run(status="FINISHED", tags=None, params=None):
    return SimpleNamespace(info=SimpleNamespace(status=status),
                           data=SimpleNamespace(tags=tags or {}, params=params or {}))


@pytest.mark.parametrize(("run", "expected"), [
    (_run(tags={SWEEP_TAG: "s", ROLE_TAG: "trial"}, params={"run.seed": "3"}), True),
    (_run("KILLED", tags={SWEEP_TAG: "s", ROLE_TAG: "trial"}, params={"run.seed": "3"}), False),
    (_run(tags={SWEEP_TAG: "s"}, params={"run.seed": "3"}), False),
    (_run(tags={SWEEP_TAG: "S", ROLE_TAG: "trial"}, params={"run.seed": "3"}), False),
    (_run(tags={SWEEP_TAG: "s", ROLE_TAG: "trial"}, params={"run.seed": "30"}), False),
])
def test_matches(run, expected):
    query = RunQuery(sweep="s", role="trial", status="FINISHED", params={"run.seed": 3})
    assert query.matches(run) is expected


class _Pages:
    """A client whose search returns its runs in pages of two, filtering nothing itself."""

    def __init__(self, runs):
        self.runs, self.calls = runs, []

    def search_runs(self, ids, filter_string, max_results, order_by=None, page_token=None):
        start = int(page_token or 0)
        self.calls.append((filter_string, max_results))
        items = self.runs[start:start + min(2, max_results)]
        token = str(start + len(items)) if start + len(items) < len(self.runs) else None
        return _PageList(items, token)


class _PageList(list):
    def __init__(self, items, token):
        super().__init__(items)
        self.token = token


def test_search_reads_every_page_and_checks_what_the_filter_cannot_say():
    runs = [_run(tags={SWEEP_TAG: v}) for v in ("it's \"x\"", "other", "it's \"x\"", "x",
                                                 "it's \"x\"")]
    client = _Pages(runs)
    found = search(client, "0", RunQuery(sweep="it's \"x\""))
    assert found == [runs[0], runs[2], runs[4]]
    assert len(client.calls) == 3 and client.calls[0][0] == ""
    assert search(_Pages(runs), ["0"], RunQuery(sweep="it's \"x\""), max_results=2) == \
        [runs[0], runs[2]]
    assert search(_Pages(runs), ["0"], RunQuery(), max_results=3) == runs[:3]


def test_a_real_store_matches_quotes_and_dotted_tag_names_exactly(tmp_path, fresh_store):
    from htl_ray.tracking import client as tracking_client

    client = tracking_client(fresh_store(tmp_path / "mlflow.db"))
    exp = client.create_experiment("e")
    names = ["it's", 'say "hi"', "both ' \"", "a\\", "it", "its", "It's", "%", "x"]
    ids = {}
    for name in names:
        for role in ("trial", "confirm"):
            run = client.create_run(exp, tags={SWEEP_TAG: name, ROLE_TAG: role,
                                               PARENT_TAG: "parent"})
            client.log_param(run.info.run_id, "run.seed", "1")
            ids[name, role] = run.info.run_id
    # the same names under undotted keys that a wrong quoting of the dotted ones would hit
    client.create_run(exp, tags={"sweep": "it's", "role": "trial", "parentRunId": "parent"})
    for name in names:
        found = search(client, exp, RunQuery(sweep=name, role="trial", parent_run_id="parent",
                                             params={"run.seed": 1}))
        assert [r.info.run_id for r in found] == [ids[name, "trial"]], name
        found = search(client, [exp], RunQuery(sweep=name))
        assert {r.info.run_id for r in found} == {ids[name, "trial"], ids[name, "confirm"]}
    assert search(client, exp, RunQuery(sweep="it's", params={"run.seed": 2})) == []
    # a user's own filter is added to the query's, also to one the grammar cannot say
    for name in ("it's", "both ' \""):
        assert [r.info.run_id for r in search(client, exp, RunQuery(sweep=name),
                                               user_filter=f"tags.`{ROLE_TAG}` = 'confirm'")] \
            == [ids[name, "confirm"]]
    assert search(client, exp, RunQuery(sweep="x"), user_filter="params.`run.seed` = '2'") == []
    assert len(search(client, exp, RunQuery(parent_run_id="parent"))) == 2 * len(names) + 0
    assert len(search(client, exp, RunQuery(parent_run_id="parent"), max_results=3)) == 3

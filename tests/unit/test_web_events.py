"""The live feed: the state DB's triggers write job states, deploy steps and events into `feed`; the
root side's `events` long poll hands out what a user may view; `GET /events` streams it as SSE over
a real uvicorn on loopback (httpx's ASGI transport buffers whole bodies), resumes after
Last-Event-ID, and carries a job's state change from the DB to the client in well under 200 ms."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sandbox.promote.deploys import Deploys
from sandbox.state import StateDB
from sandbox.web.jobs import Jobs
from sandbox.web.rpcproto import RPCError
from tests.unit.webworld import Served, World, read_events, sse_latencies, world

D2 = "sha256:" + "d" * 64


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


def call(w: World, who: str, args: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = w.root.handle("events", {"token": w.tokens[who]}, "127.0.0.1", args)
    return result


def test_triggers_feed_job_states_deploy_steps_and_events(w: World) -> None:
    jobs = Jobs(w.state)
    job = jobs.submit("verify", {"env": "staging-1"}, who="dave", trigger="button")
    assert jobs.claim_next() is not None
    jobs.finish(job.id, True, {"ok": True})
    deploys = Deploys(w.state)
    w.state.event("promote", "promoting", env="prod")
    d = deploys.begin("prod", "sha256:" + "c" * 64, D2, "blue-green")
    deploys.step(d.id, "probe", ok=3)
    deploys.finish(d.id, "done")
    rows = w.root.feed.since(0)
    kinds = [(r["kind"], r["env"], r["data"].get("state")) for r in rows]
    assert kinds[:3] == [("job", "staging-1", s) for s in ("queued", "running", "done")]
    assert ("event", "prod", None) in kinds
    steps = [r["data"]["step"] for r in rows if r["kind"] == "deploy"]
    assert steps[0] is None and steps[1]["step"] == "probe" and steps[1]["ok"] == 3
    assert rows[-1]["data"]["state"] == "done" and rows[-1]["data"]["strategy"] == "blue-green"
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)


def test_events_are_filtered_by_view_and_the_cursor_moves_past_hidden_ones(w: World) -> None:
    jobs = Jobs(w.state)
    w.auth.add_user("stager", "correct horse battery", {"staging": "viewer"})
    w.tokens["stager"] = w.auth.add_token("stager", "t")
    start = call(w, "stager", {})
    assert start["events"] == [] and start["reset"] is False
    jobs.submit("verify", {"env": "prod"}, who="root", trigger="cli")
    jobs.submit("verify", {"env": "staging-1"}, who="root", trigger="cli")
    w.state.event("gc", "server-wide")  # env NULL: admins only
    got = call(w, "stager", {"after": start["last"]})
    assert [e["env"] for e in got["events"]] == ["staging-1"] and got["last"] == start["last"] + 3
    assert [e["env"] for e in call(w, "admin", {"after": start["last"]})["events"]] == [
        "prod",
        "staging-1",
        None,
    ]
    assert call(w, "nobody", {"after": start["last"]})["events"] == []
    # an id this DB never gave out (or pruned) is a reset, from now on
    far = call(w, "admin", {"after": 10**9})
    assert far["reset"] is True and far["last"] == got["last"] and far["events"] == []
    for bad in ({"after": -1}, {"after": "1"}, {"after": True}, {"wait": 26}, {"wait": "1"}):
        with pytest.raises(RPCError) as ei:
            call(w, "admin", bad)
        assert ei.value.status == 400
    with pytest.raises(RPCError) as ei:
        w.root.handle("events", {}, "127.0.0.1", {})
    assert ei.value.status == 401


def test_a_long_poll_wakes_on_a_write_from_another_connection(w: World) -> None:
    start = call(w, "admin", {})["last"]
    other = StateDB(w.state.path)  # a connection of its own, as the CLI or the worker has
    threading.Timer(0.3, lambda: other.event("x", "late", env="prod")).start()
    t0 = time.monotonic()
    got = call(w, "admin", {"after": start, "wait": 5})
    waited = time.monotonic() - t0
    assert [e["data"]["message"] for e in got["events"]] == ["late"]
    assert 0.25 < waited < 1.0, waited
    t0 = time.monotonic()
    assert call(w, "admin", {"after": got["last"], "wait": 0.2})["events"] == []
    assert time.monotonic() - t0 >= 0.19


# -- over HTTP ---------------------------------------------------------------------------------


@pytest.fixture
def served(w: World) -> Iterator[Served]:
    s = Served(w.app)
    try:
        yield s
    finally:
        s.stop()


def test_sse_streams_what_the_user_may_view_and_resumes_after_last_event_id(w: World, served: Served) -> None:
    jobs = Jobs(w.state)
    auth = {"Authorization": f"Bearer {w.tokens['dave']}"}
    with httpx.Client(base_url=served.url, timeout=5) as c:
        assert c.get("/events").status_code == 401
        assert c.get("/events", headers={"Authorization": "Bearer sbx_nope.nope"}).status_code == 401
        with c.stream("GET", "/events", headers=auth) as r:
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-store"
            lines = r.iter_lines()
            a = jobs.submit("verify", {"env": "staging-1"}, who="dave", trigger="button")
            jobs.submit("verify", {"env": "prod"}, who="root", trigger="cli")  # dave: viewer on *
            w.auth.add_user("zed", "correct horse battery", {})
            jobs.cancel(a.id)
            evs = read_events(lines, 3)
        assert [(e["event"], e["data"]["env"], e["data"]["state"]) for e in evs] == [
            ("job", "staging-1", "queued"),
            ("job", "prod", "queued"),
            ("job", "staging-1", "cancelled"),
        ]
        assert evs[0]["data"]["who"] == "dave" and evs[0]["data"]["trigger"] == "button"
        # a reconnect with Last-Event-ID gets what came after it, including what happened meanwhile
        jobs.submit("verify", {"env": "dev-dave"}, who="dave", trigger="button")
        with c.stream("GET", "/events", headers={**auth, "Last-Event-ID": evs[0]["id"]}) as r:
            again = read_events(r.iter_lines(), 3)
        assert [e["id"] for e in again[:2]] == [evs[1]["id"], evs[2]["id"]]
        assert again[2]["data"]["env"] == "dev-dave"
        # a pruned or foreign id: one reset event
        with c.stream("GET", "/events", headers={**auth, "Last-Event-ID": "999999"}) as r:
            assert read_events(r.iter_lines(), 1)[0]["event"] == "reset"


def test_sse_latency_from_a_db_write_to_the_client(w: World, served: Served) -> None:
    """A job's state change written by another connection (the worker's, the CLI's) reaches the SSE
    client: the median over 15 changes must be under 200 ms (the poll is 50 ms)."""
    lat = sse_latencies(w, served.url, 15)
    median = statistics.median(lat)
    print(f"SSE latency DB write -> client: median {median * 1000:.0f} ms, max {max(lat) * 1000:.0f} ms")
    assert median < 0.2, lat

"""The deploy timeline, the probe's SVG plot and the audit log, through the real app and root side."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.promote.deploys import Deploys
from sandbox.promote.probe import Sample, series
from sandbox.web.jobs import Jobs
from sandbox.web.svgplot import plot
from tests.unit.webworld import D, World, world

D2 = "sha256:" + "d" * 64
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


def test_probe_series_buckets_per_second() -> None:
    samples = [
        Sample(100.0, "before", "get-new", 200, 0.010),
        Sample(100.5, "before", "get-new", 200, 0.030),
        Sample(101.2, "during", "get-new", 502, 0.002),
        Sample(101.3, "during", "get-slow", 200, 3.0),
        Sample(102.9, "after", "get-new", None, 0.5, error="ConnectionResetError: x"),
    ]
    assert series(samples) == [
        [0, "before", 2, 2, 30.0, 30.0],
        [1, "during", 2, 1, 2.0, 2.0],  # the slow request counts in requests and ok, not latency
        [2, "after", 1, 0, 0.0, 0.0],
    ]
    assert series([]) == []


def test_the_plot_is_well_formed_svg_with_a_red_second_and_escaped_text() -> None:
    rows = [[0, "before", 10, 10, 2.0, 5.0], [1, "during", 10, 7, 3.0, 40.0], [2, "<x>", 10, 10, 2.5, 4.0]]
    svg = plot([*rows, ["junk"], [1, 2]], title="a <b> & c")
    root = ET.fromstring(svg)  # well-formed: nothing unescaped got in
    assert root.tag == f"{SVG}svg" and root.find(f"{SVG}title").text == "a <b> & c"  # type: ignore[union-attr]
    fills = [r.get("fill") for r in root.iter(f"{SVG}rect") if r.get("height") == "30"]
    assert fills == ["#3a3", "#d33", "#3a3"]
    assert root.find(f"{SVG}polyline") is not None and "<script" not in svg
    assert "27/30 ok" in svg and "50 ms" in svg  # the axis is rounded up from 40 ms
    assert plot([]) == "" and plot("nonsense") == ""
    assert plot([[0, "before", float("nan"), 1, float("inf"), 1]]).startswith("<svg")


def test_the_timeline_shows_who_steps_and_the_plot_and_hides_what_a_user_may_not_view(w: World) -> None:
    jobs = Jobs(w.state)
    job = jobs.submit(
        "promote", {"env": "staging-1", "source": "dev-dave", "image": D2}, who="dave", trigger="button"
    )
    assert jobs.claim_next() is not None
    deploys = Deploys(w.state)
    d = deploys.begin("staging-1", D, D2, "rolling")
    deploys.step(d.id, "started", instance="staging-1-1")
    deploys.step(d.id, "healthy", instance="staging-1-1", seconds=1.5)
    deploys.finish(d.id, "done")
    deploys.step(
        d.id, "probe", series=[[0, "before", 5, 5, 1.0, 2.0], [1, "during", 5, 4, 1.5, 9.0]], phases={}
    )
    jobs.finish(job.id, True, {})
    cli = deploys.begin("prod", D, D2, "blue-green")  # no job: root's CLI
    deploys.finish(cli.id, "failed", error="boom")
    c = w.client()
    assert c.login("dave").status_code == 303
    page = c.get("/deploys")
    assert page.status_code == 200
    assert f'href="/deploys/{d.id}"' in page.text and f'href="/deploys/{cli.id}"' in page.text
    one = c.get(f"/deploys/{d.id}")
    assert one.status_code == 200
    text = one.text
    assert ">dave<" in text.replace("<dd>dave (job", ">dave< (job") and f"job #{job.id}" in text
    assert "button" in text and "rolling" in text and "healthy" in text and "seconds=1.5" in text
    assert "<svg" in text and "9/10 ok" in text and 'data-live="staging-1"' in text
    other = c.get(f"/deploys/{cli.id}").text
    assert "root" in other and "cli" in other and "boom" in other and "no probe ran" in other
    assert c.get("/deploys/999").status_code == 404 and c.get("/deploys/x").status_code == 400
    # a user with a role on staging only: prod's deploy is as unknown as a missing one
    w.auth.add_user("stager", "correct horse battery", {"staging": "viewer"})
    s = w.client()
    assert s.login("stager", "correct horse battery").status_code == 303
    assert s.get(f"/deploys/{cli.id}").status_code == 404
    assert f'href="/deploys/{cli.id}"' not in s.get("/deploys").text


def test_the_audit_log_records_logins_cancels_and_jobs_for_admins_only(w: World) -> None:
    c = w.client()
    assert c.login("dave", "wrong password!!").status_code == 401
    assert c.login("dave").status_code == 303
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "verify", "env": "staging-1"})
    assert r.status_code == 303
    job = Jobs(w.state).recent()[0]
    assert c.post(f"/jobs/{job.id}/cancel", data={"csrf": c.csrf}).status_code == 303
    assert c.post("/logout", data={"csrf": c.csrf}).status_code == 303
    assert c.login("dave").status_code == 303
    assert c.get("/audit").status_code == 403
    a = w.client()
    assert a.login("admin").status_code == 303
    page = a.get("/audit")
    assert page.status_code == 200
    for what in ("login failed", "logout", "cancelled job", f"verify (job #{job.id}, button)"):
        assert what in page.text, what
    assert page.text.index(f"cancelled job #{job.id}") < page.text.index("login failed")  # newest first
    assert 'href="/audit"' in page.text and 'href="/audit"' not in c.get("/envs").text

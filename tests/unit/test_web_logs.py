"""Live app logs on the env page and in the API: the root side reads them (the same argv as
`sandbox logs`), for users who may view the env; bounded lines, escaped in the page; bad values are
400s. The reader itself (`read_lines`) against real processes: a tail, a failure, a timeout."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.errors import SandboxError
from sandbox.web import views
from tests.unit.webworld import World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


@pytest.mark.parametrize("who", ["nobody", "viewer", "dave", "deployer", "admin"])
def test_the_api_gives_the_logs_to_whoever_may_view_the_env(w: World, who: str) -> None:
    r = w.client().get("/api/v1/envs/prod/logs?lines=1", headers=w.api(who))
    if who == "nobody":
        assert r.status_code == 403
        return
    assert r.status_code == 200, r.text
    assert r.json() == {"env": "prod", "instance": 0, "lines": ["<script>alert(1)</script> GET /healthz 200"]}


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ("?instance=1", 404, "no instance 1"),
        ("?instance=-1", 400, "whole number"),
        ("?lines=0", 400, "from 1 to 1000"),
        ("?lines=1001", 400, "from 1 to 1000"),
        ("?lines=abc", 400, "whole number"),
    ],
)
def test_bad_values_are_400_or_404(w: World, query: str, status: int, words: str) -> None:
    r = w.client().get(f"/api/v1/envs/prod/logs{query}", headers=w.api("viewer"))
    assert r.status_code == status and words in r.json()["message"], r.text


def test_an_unknown_env_and_a_bad_name_and_no_token(w: World) -> None:
    c = w.client()
    assert c.get("/api/v1/envs/nope/logs", headers=w.api("viewer")).status_code == 404
    assert c.get("/api/v1/envs/..%2Fetc/logs", headers=w.api("viewer")).status_code in (400, 404)
    assert c.get("/api/v1/envs/prod/logs").status_code == 401


def test_the_env_page_loads_the_logs_fragment_escaped(w: World) -> None:
    c = w.client()
    c.login("viewer")
    page = c.get("/envs/prod?instance=0")
    assert page.status_code == 200
    assert 'hx-get="/envs/prod/logs?instance=0"' in page.text and 'hx-trigger="load, every 3s"' in page.text
    frag = c.get("/envs/prod/logs")
    assert frag.status_code == 200 and "prod-0 started" in frag.text
    assert "<script>" not in frag.text and "&lt;script&gt;" in frag.text
    bad = c.get("/envs/prod/logs?instance=5")
    assert bad.status_code == 404 and "no instance 5" in bad.text
    c.login("nobody")
    assert c.get("/envs/prod/logs").status_code == 403


def test_read_lines_keeps_the_tail_and_reports_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    py = sys.executable
    assert views.read_lines([py, "-c", "print('\\n'.join(map(str, range(10))))"], 3) == ["7", "8", "9"]
    assert views.read_lines([py, "-c", "import sys; sys.stdout.buffer.write(b'\\xff')"], 5) == ["\ufffd"]
    with pytest.raises(SandboxError, match="failed: boom"):
        views.read_lines([py, "-c", "import sys; sys.exit('boom')"], 5)
    with pytest.raises(SandboxError, match="cannot read the logs"):
        views.read_lines(["/nonexistent/journalctl"], 5)
    monkeypatch.setattr(views, "LOG_TIMEOUT", 0.5)
    with pytest.raises(SandboxError, match=r"took over 0\.5 s"):
        views.read_lines([py, "-c", "import time; print('x', flush=True); time.sleep(30)"], 5)


def test_badges_say_live_maintenance_and_read_only(w: World) -> None:
    w.views.rows["prod"].update(maintenance=["10.0.0.0/8"], readonly=True, url="http://127.0.0.1:19000/")
    w.views.rows["staging-1"].update(url="javascript:alert(1)")
    c = w.client()
    c.login("viewer")
    page = c.get("/envs").text
    assert page.count('class="badge mode-live"') == 2  # staging-1 and dev-dave
    assert 'class="badge mode-maintenance" title="maintenance page on; allowed: 10.0.0.0/8"' in page
    assert 'class="badge mode-readonly"' in page
    assert '<a href="http://127.0.0.1:19000/"' in page and 'href="javascript' not in page
    one = c.get("/envs/prod").text
    assert "on, allowed: 10.0.0.0/8" in one and "<dt>read-only</dt><dd>on</dd>" in one

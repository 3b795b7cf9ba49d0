"""Interrupted jobs and the promotion probe: the `dismiss` RPC and its routes (a form with CSRF,
POST /api/v1/jobs/ID/dismiss) by every role, the resume/rollback/dismiss buttons only for those
who may press them, the audit row; the `probe` argument of promote, rollback and resume (checked
like every argument) and the worker running those jobs under a load probe."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.promote.rolling import Promoter
from sandbox.web import timeline
from sandbox.web.jobargs import MAX_PROBE, JobArgError, check_job
from sandbox.web.jobs import Job, Jobs
from sandbox.web.worker import Worker, WorkspaceRunner
from tests.unit.test_envs_orchestration import World as EnvWorld
from tests.unit.test_envs_orchestration import _fresh_fake  # noqa: F401 (an autouse fixture)
from tests.unit.webworld import D, FakeViews, World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


def interrupted(w: World, kind: str, args: dict[str, Any], who: str = "deployer") -> Job:
    """A job of `kind` that was running when the server stopped."""
    jobs = Jobs(w.state)
    job = jobs.submit(kind, args, who=who, trigger="button")
    claimed = jobs.claim_next()
    assert claimed is not None and claimed.id == job.id
    assert [j.id for j in jobs.interrupt_running()] == [job.id]
    return jobs.get(job.id)


def settle_forms(html: str) -> set[tuple[str, str]]:
    """(what, kind) of the resume/rollback/dismiss buttons on a page: what is an env or a job id."""
    out = {("#" + m, "dismiss") for m in re.findall(r'action="/jobs/(\d+)/dismiss"', html)}
    for form in re.findall(r'<form method="post" action="/jobs".*?</form>', html, re.S):
        kind = re.search(r'name="kind" value="([a-z]+)"', form)
        env = re.search(r'name="env" value="([a-z0-9-]+)"', form)
        assert kind and env
        if kind.group(1) in ("resume", "rollback"):
            out.add((env.group(1), kind.group(1)))
    return out


# -- the probe argument -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["promote", "rollback", "resume"])
def test_a_probe_rate_is_a_small_whole_number(kind: str) -> None:
    base: dict[str, Any] = {"env": "prod"}
    if kind == "promote":
        base.update(source="staging-1", image=D)
    for good in (1, 20, MAX_PROBE):
        assert check_job(kind, {**base, "probe": good})["probe"] == good
    assert check_job(kind, {**base, "probe": 20.0})["probe"] == 20  # JSON's 20.0 is 20
    for bad in (0, -5, MAX_PROBE + 1, True, "20", 2.5, None, [20]):
        with pytest.raises(JobArgError, match="invalid probe rate"):
            check_job(kind, {**base, "probe": bad})


def test_only_promotions_take_a_probe() -> None:
    with pytest.raises(JobArgError, match="unknown argument"):
        check_job("verify", {"env": "prod", "probe": 20})


def test_the_worker_runs_promotions_under_the_probe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ew = EnvWorld(tmp_path)
    envs = ew.envs()
    jobs = Jobs(envs.state)
    worker = Worker(jobs, FakeViews(), WorkspaceRunner(ew.ws, envs=ew.envs))
    calls: list[tuple[str, float | None]] = []
    import sandbox.promote.probe as probe_mod

    real = probe_mod.with_load_probe

    def fake(envs: Any, target: str, rps: float | None, run: Any) -> tuple[Any, Any]:
        calls.append((target, rps))
        if rps is None:
            return real(envs, target, rps, run)
        return run(), {"during": {"requests": 7}}

    monkeypatch.setattr(probe_mod, "with_load_probe", fake)

    def run(kind: str, **args: object) -> Job:
        job = jobs.submit(kind, dict(args), who="root", trigger="cli")
        done = worker.run_once()
        assert done is not None and done.id == job.id
        return done

    assert run("up", env="prod").state == "done"
    assert run("up", env="staging-2", image=ew.b).state == "done"
    Promoter(ew.envs()).deploys.record_verification(ew.b, "staging-2", True, "a test says so")
    done = run("promote", env="prod", source="staging-2", image=ew.b, probe=20)
    assert (done.state, done.error) == ("done", None) and done.result is not None
    assert done.result["probe"] == {"during": {"requests": 7}} and done.result["state"] == "done"
    done = run("rollback", env="prod")  # no probe asked: none run, none in the result
    assert done.state == "done" and done.result is not None and "probe" not in done.result
    assert calls == [("prod", 20), ("prod", None)]
    done = run("resume", env="prod", probe=3)  # nothing to resume: the promoter's error, no probe
    assert done.state == "failed" and done.error is not None and calls[-1] == ("prod", 3)


# -- dismiss ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "status"), [("nobody", 404), ("viewer", 403), ("dave", 403), ("deployer", 200), ("admin", 200)]
)
def test_dismiss_over_the_api_by_every_role(w: World, who: str, status: int) -> None:
    job = interrupted(w, "promote", {"env": "prod", "source": "staging-1", "image": D})
    c = w.client()
    r = c.post(f"/api/v1/jobs/{job.id}/dismiss", headers=w.api(who))
    assert r.status_code == status, r.text
    after = Jobs(w.state).get(job.id)
    assert after.state == "interrupted"
    rows = [r for r in timeline.audit(w.state, 50) if r["action"] == "dismiss"]
    if status == 200:
        assert r.json()["resolved"] is not None and after.resolved is not None
        assert [(r["who"], r["env"]) for r in rows] == [(who, "prod")]
        assert f"#{job.id}" in rows[0]["detail"]
        again = c.post(f"/api/v1/jobs/{job.id}/dismiss", headers=w.api(who))
        assert again.status_code == 409
    else:
        assert after.resolved is None and rows == []


def test_dismiss_refuses_what_is_not_an_unsettled_interruption(w: World) -> None:
    c = w.client()
    queued = Jobs(w.state).submit("verify", {"env": "staging-1"}, who="dave", trigger="button")
    r = c.post(f"/api/v1/jobs/{queued.id}/dismiss", headers=w.api("deployer"))
    assert r.status_code == 409 and Jobs(w.state).get(queued.id).state == "queued"
    assert c.post("/api/v1/jobs/999/dismiss", headers=w.api("deployer")).status_code == 404
    assert c.post("/api/v1/jobs/abc/dismiss", headers=w.api("deployer")).status_code == 400
    assert c.post(f"/api/v1/jobs/{queued.id}/dismiss").status_code == 401
    assert c.get(f"/api/v1/jobs/{queued.id}/dismiss", headers=w.api("deployer")).status_code == 405


def test_a_developer_dismisses_the_interrupted_job_of_their_own_env(w: World) -> None:
    job = interrupted(w, "extend", {"env": "dev-dave", "ttl": 3600}, who="dave")
    c = w.client()
    assert c.login("dave").status_code == 303
    page = c.get("/jobs").text
    assert settle_forms(page) == {(f"#{job.id}", "dismiss")}  # not a promotion: no resume, rollback
    r = c.post(f"/jobs/{job.id}/dismiss", data={})  # no CSRF token: refused, nothing changed
    assert r.status_code == 403 and Jobs(w.state).get(job.id).resolved is None
    r = c.post(f"/jobs/{job.id}/dismiss", data={"csrf": c.csrf})
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    assert Jobs(w.state).get(job.id).resolved is not None
    page = c.get("/jobs").text
    assert settle_forms(page) == set() and "settled" in page


def test_interrupted_promotions_show_only_the_buttons_the_role_may_press(w: World) -> None:
    job = interrupted(w, "promote", {"env": "prod", "source": "staging-1", "image": D})
    w.views.rows["prod"]["url"] = "http://127.0.0.1:8080/"  # a router: the buttons carry a probe
    seen = {}
    for who in ("viewer", "dave", "deployer"):
        c = w.client()
        assert c.login(who).status_code == 303
        seen[who] = settle_forms(c.get("/jobs").text)
        env_page = c.get("/envs/prod").text
        assert {b for b in settle_forms(env_page) if b[0].startswith("#")} == {
            b for b in seen[who] if b[0].startswith("#")
        }
        if who == "deployer":
            for form in re.findall(r'<form method="post" action="/jobs".*?</form>', env_page, re.S):
                if 'value="resume"' in form or 'value="rollback"' in form:
                    assert 'name="probe" value="20"' in form
    assert seen["viewer"] == seen["dave"] == set()
    assert seen["deployer"] == {("prod", "resume"), ("prod", "rollback"), (f"#{job.id}", "dismiss")}
    # the resume button's form, posted: a resume job with the probe, which may run while prod is held
    c = w.client()
    assert c.login("deployer").status_code == 303
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "resume", "env": "prod", "probe": "20"})
    assert r.status_code == 303
    resume = Jobs(w.state).recent()[0]
    assert (resume.kind, resume.args, resume.state) == ("resume", {"env": "prod", "probe": 20}, "queued")
    assert Jobs(w.state).claim_next() is not None  # a settling kind passes the held queue

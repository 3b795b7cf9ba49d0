"""The JSON API (/api/v1) over httpx against the real app and root side: every route tried by every
role, forged and revoked tokens, malformed and oversized bodies, an unknown env, job submit and
cancel, the OpenAPI document; the RPC socket's own refusals; the worker's second check."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.errors import SandboxError
from sandbox.web import rpcproto
from sandbox.web.jobs import STATES, Job, Jobs
from sandbox.web.openapi import JOB_STATES, OPENAPI
from sandbox.web.worker import Worker
from tests.unit.webworld import CHEAP, ROLES, World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


JOBS: dict[str, dict[str, Any]] = {  # a job per permission, and who may submit it
    "up-own": {"kind": "up", "args": {"env": "dev-dave"}},
    "deploy-staging": {"kind": "up", "args": {"env": "staging-2", "image": "sha256:" + "c" * 64}},
    "verify": {"kind": "verify", "args": {"env": "staging-1"}},
    "promote": {
        "kind": "promote",
        "args": {"env": "prod", "source": "staging-1", "image": "sha256:" + "c" * 64},
    },
    "maintenance": {"kind": "maintenance", "args": {"env": "prod", "on": True}},
    "down-prod": {"kind": "down", "args": {"env": "prod"}},
    "down-own": {"kind": "down", "args": {"env": "dev-dave"}},
}
MAY_SUBMIT = {
    "nobody": set(),
    "viewer": set(),
    "dave": {"up-own", "deploy-staging", "verify", "down-own"},
    "deployer": set(JOBS),  # up of dev-dave: deploy_staging on dev, which a deployer holds
    "admin": set(JOBS),
}


@pytest.mark.parametrize("who", list(ROLES))
def test_every_api_route_by_every_role(w: World, who: str) -> None:
    c = w.client()
    h = w.api(who)
    me = c.get("/api/v1/whoami", headers=h)
    assert me.status_code == 200 and me.json()["name"] == who and me.json()["admin"] == (who == "admin")
    envs = c.get("/api/v1/envs", headers=h)
    assert envs.status_code == 200
    expected = {"nobody": set(), "viewer": {"staging-1", "prod", "dev-dave"}}.get(
        who, {"staging-1", "prod", "dev-dave"}
    )
    assert {e["name"] for e in envs.json()} == expected
    if expected:  # the very rows the CLI's `ls --json` prints
        assert envs.json()[0] == w.views.envs()[0]
    prod = c.get("/api/v1/envs/prod", headers=h)
    assert prod.status_code == (403 if who == "nobody" else 200)
    images = c.get("/api/v1/images", headers=h)
    assert images.status_code == (403 if who == "nobody" else 200)
    assert c.get("/api/v1/jobs", headers=h).status_code == 200
    for name, job in JOBS.items():
        r = c.post("/api/v1/jobs", json=job, headers=h)
        if name in MAY_SUBMIT[who]:
            assert r.status_code == 201, (name, r.text)
            assert r.json()["state"] == "queued" and r.json()["who"] == who
        else:
            assert r.status_code == 403, (name, r.text)
            assert "may not" in r.json()["message"]
    queued = Jobs(w.state).recent()
    assert len(queued) == len(MAY_SUBMIT[who])
    # cancel: needs cancel_job (developer) on the job's profile
    other = Jobs(w.state).submit("verify", {"env": "prod"}, who="root", trigger="cli")
    r = c.delete(f"/api/v1/jobs/{other.id}", headers=h)
    assert r.status_code == {"nobody": 404, "viewer": 403, "dave": 403}.get(who, 200), r.text


def test_jobs_are_listed_only_where_the_user_may_view(w: World) -> None:
    jobs = Jobs(w.state)
    jobs.submit("verify", {"env": "prod"}, who="root", trigger="cli")
    jobs.submit("verify", {"env": "staging-1"}, who="root", trigger="cli")
    c = w.client()
    assert [j["env"] for j in c.get("/api/v1/jobs", headers=w.api("dave")).json()] == ["staging-1", "prod"]
    assert c.get("/api/v1/jobs", headers=w.api("nobody")).json() == []
    assert [j["env"] for j in c.get("/api/v1/jobs?env=prod", headers=w.api("viewer")).json()] == ["prod"]
    assert c.get("/api/v1/jobs?limit=abc", headers=w.api("viewer")).status_code == 400
    assert c.get("/api/v1/jobs?env=../etc", headers=w.api("viewer")).status_code == 400


@pytest.mark.parametrize(
    "auth",
    [
        None,
        "Bearer",
        "Basic dXNlcjpwYXNz",
        "Bearer sbx_" + "0" * 18 + "." + "A" * 43,  # well-formed, forged
        "Bearer " + "x" * 5000,
    ],
)
def test_no_or_a_forged_token_is_401(w: World, auth: str | None) -> None:
    c = w.client()
    r = c.get("/api/v1/envs", headers={"Authorization": auth} if auth else {})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = c.post("/api/v1/jobs", json=JOBS["verify"], headers={"Authorization": auth} if auth else {})
    assert r.status_code == 401 and Jobs(w.state).recent() == []


def test_a_revoked_token_and_a_session_cookie_do_not_open_the_api(w: World) -> None:
    c = w.client()
    assert c.get("/api/v1/envs", headers=w.api("dave")).status_code == 200
    w.auth.remove_token("dave", "t")
    assert c.get("/api/v1/envs", headers=w.api("dave")).status_code == 401
    assert c.login("deployer").status_code == 303  # a browser session is not an API credential
    assert c.get("/api/v1/envs").status_code == 401
    assert c.post("/api/v1/jobs", json=JOBS["down-prod"]).status_code == 401


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{", 400, "malformed JSON"),
        (b'{"kind": "verify", "kind": "down", "args": {"env": "staging-1"}}', 400, "duplicate key"),
        (b"[1, 2]", 400, '{"kind"'),
        (b'{"kind": "verify", "args": {"env": "staging-1"}, "x": 1}', 400, '{"kind"'),
        (b'{"kind": "rm -rf", "args": {"env": "staging-1"}}', 400, "unknown job kind"),
        (b'{"kind": "verify", "args": {"env": "../../etc"}}', 400, "invalid environment name"),
        (b'{"kind": "verify", "args": {"env": "staging-1", "cmd": "id"}}', 400, "unknown argument"),
        (b'{"kind": "extend", "args": {"env": "dev-dave", "ttl": "1h"}}', 400, "invalid ttl"),
        (b'{"kind": "verify", "args": {"env": NaN}}', 400, "malformed JSON"),
        (b"\xff\xfe", 400, "malformed JSON"),
        (b'{"kind": "verify", "args": {"env": "' + b"a" * 70000 + b'"}}', 413, "over"),
    ],
)
def test_malformed_and_oversized_bodies(w: World, body: bytes, status: int, words: str) -> None:
    c = w.client()
    r = c.post("/api/v1/jobs", content=body, headers={**w.api("dave"), "content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.json()["message"] + str(r.json()["hint"])
    assert Jobs(w.state).recent() == []


def test_an_unknown_env_is_404(w: World) -> None:
    c = w.client()
    r = c.get("/api/v1/envs/nosuch", headers=w.api("admin"))
    assert r.status_code == 404 and "not found" in r.json()["message"]
    assert c.get("/api/v1/envs/bad..name", headers=w.api("admin")).status_code == 400


def test_submit_and_cancel(w: World) -> None:
    c = w.client()
    r = c.post("/api/v1/jobs", json=JOBS["verify"], headers=w.api("dave"))
    assert r.status_code == 201
    job = r.json()
    assert (job["kind"], job["env"], job["trigger"], job["state"]) == (
        "verify",
        "staging-1",
        "button",
        "queued",
    )
    r = c.delete(f"/api/v1/jobs/{job['id']}", headers=w.api("dave"))
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    r = c.delete(f"/api/v1/jobs/{job['id']}", headers=w.api("dave"))
    assert r.status_code == 409 and "only a queued job" in r.json()["message"]
    assert c.delete("/api/v1/jobs/999", headers=w.api("dave")).status_code == 404
    assert c.delete("/api/v1/jobs/abc", headers=w.api("dave")).status_code == 400


def test_the_openapi_document_names_every_route(w: World) -> None:
    doc = w.client().get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    assert set(doc["paths"]) == {
        "/api/v1/whoami",
        "/api/v1/envs",
        "/api/v1/envs/{name}",
        "/api/v1/envs/{name}/logs",
        "/api/v1/images",
        "/api/v1/images/diff",
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/dismiss",
    }
    assert doc == OPENAPI
    assert JOB_STATES == STATES  # the document's copy (the HTTP side does not import web.jobs)


def raw_rpc(w: World, data: bytes) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(w.socket))
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer: dict[str, Any] = json.loads(rpcproto.read_line(s))
        return answer


def test_the_rpc_socket_refuses_what_is_not_a_well_formed_authorized_call(w: World) -> None:
    assert raw_rpc(w, b"not json\n")["status"] == 400
    assert raw_rpc(w, b'{"method": "envs"}\n')["status"] == 400
    req = {"method": "shell", "cred": {}, "source": "", "args": {}}
    assert raw_rpc(w, json.dumps(req).encode() + b"\n")["status"] == 400
    req = {"method": "envs", "cred": {}, "source": "", "args": {}}
    assert raw_rpc(w, json.dumps(req).encode() + b"\n")["status"] == 401
    req = {"method": "envs", "cred": {"session": "a" * 18 + "." + "b" * 43}, "source": "", "args": {}}
    assert raw_rpc(w, json.dumps(req).encode() + b"\n")["status"] == 401
    answer = raw_rpc(w, b"x" * (rpcproto.MAX_LINE + 10) + b"\n")
    assert answer["status"] == 413
    with pytest.raises(rpcproto.RPCError) as e:
        rpcproto.call(str(w.socket), "envs", {"token": w.tokens["dave"]}, {"pad": "x" * rpcproto.MAX_LINE})
    assert e.value.status == 413


def test_the_rpc_socket_is_0660(w: World) -> None:
    assert w.socket.stat().st_mode & 0o777 == 0o660


def test_the_worker_checks_may_again_and_runs_only_what_passes(w: World) -> None:
    ran: list[tuple[str, str]] = []

    def runner(job: Job) -> dict[str, Any]:
        ran.append((job.kind, job.env))
        if job.env == "staging-1":
            raise SandboxError("the fake backend failed", hint="a test")
        return {"ok": True}

    jobs = Jobs(w.state)
    worker = Worker(jobs, w.views, runner)
    a = jobs.submit("extend", {"env": "dev-dave", "ttl": 3600}, who="dave", trigger="button")
    b = jobs.submit("verify", {"env": "staging-1"}, who="dave", trigger="button")
    c = jobs.submit(
        "down", {"env": "prod"}, who="dave", trigger="button"
    )  # queued behind the HTTP side's back
    w.auth.set_role("dave", "dev", None)
    d = jobs.submit("down", {"env": "dev-dave"}, who="dave", trigger="button")  # dave lost the dev role
    while worker.run_once() is not None:
        pass
    assert ran == [("verify", "staging-1")]  # a was queued while dave held the dev role: refused now
    got = {j.id: (j.state, j.error) for j in jobs.recent()}
    assert got[a.id][0] == "failed" and "refused by the worker" in str(got[a.id][1])
    assert got[b.id] == ("failed", "the fake backend failed (hint: a test)")
    assert got[c.id][0] == "failed" and "dave may not run down on prod" in str(got[c.id][1])
    assert got[d.id][0] == "failed" and "refused by the worker" in str(got[d.id][1])


def test_the_real_views_of_an_empty_workspace(tmp_path: Path) -> None:
    """WorkspaceViews calls the CLI's own view code (Envs.ls/view, ImageStore.summaries)."""
    from sandbox.state import StateDB
    from sandbox.web.auth import Auth
    from sandbox.web.rootside import RootSide
    from sandbox.web.rpcproto import RPCError
    from sandbox.web.views import WorkspaceViews
    from sandbox.workspace import Workspace

    (tmp_path / "sandbox.yaml").write_text("")
    ws = Workspace(tmp_path)
    root = RootSide(StateDB.for_workspace(ws), WorkspaceViews(ws))
    root.auth = Auth(root.state, hasher=CHEAP)
    token = root.auth.add_token(root.auth.add_user("ann", "correct horse battery", {"*": "viewer"}).name, "t")
    cred = {"token": token}
    answer = root.handle("envs", cred, "127.0.0.1", {})
    assert answer == {
        "envs": [],
        "buttons": {},
        "own_env": None,
        "deploy_patterns": [],
        "feed": root.feed.last_id(),
    }
    assert root.handle("images", cred, "127.0.0.1", {}) == []
    with pytest.raises(RPCError) as e:
        root.handle("env", cred, "127.0.0.1", {"name": "staging-9"})
    assert e.value.status == 404


def test_digits_that_are_not_ascii_are_400_not_500(w: World) -> None:
    """str.isdigit() is true for '²', which int() refuses (a 500 before): every number the HTTP side
    reads from a path, a query, a header or a form is ASCII digits only."""
    c, h = w.client(), w.api("admin")
    for url in ("/api/v1/jobs?limit=%C2%B2", "/api/v1/jobs?limit=%D9%A1"):
        assert c.get(url, headers=h).status_code == 400
    assert c.delete("/api/v1/jobs/%C2%B2", headers=h).status_code == 400
    assert c.delete("/api/v1/jobs/%D9%A1", headers=h).status_code == 400  # int() would take ARABIC-INDIC ONE
    r = c.post("/api/v1/jobs", headers={**h, "content-length": b"\xb2"}, content=b"")  # type: ignore[dict-item]
    assert r.status_code == 413
    assert c.login("admin").status_code == 303
    assert c.get("/deploys/%C2%B2").status_code == 400
    assert c.post("/jobs/%C2%B2/cancel", data={"csrf": c.csrf}).status_code == 400
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "extend", "env": "dev-dave", "ttl": "\u00b2"})
    assert r.status_code == 400 and Jobs(w.state).recent() == []


def test_unknown_or_repeated_query_parameters_are_400(w: World) -> None:
    c, h = w.client(), w.api("admin")
    assert c.get("/api/v1/jobs?env=prod&limit=5", headers=h).status_code == 200
    for url in ("/api/v1/jobs?state=queued", "/api/v1/jobs?env=prod&env=dev-dave", "/api/v1/whoami?x=1"):
        r = c.get(url, headers=h)
        assert r.status_code == 400 and r.json()["error"] == "BadRequest", url


def test_a_405_lists_every_method_of_the_route(w: World) -> None:
    r = w.client().request("PUT", "/api/v1/jobs", headers=w.api("admin"))
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}

"""The HTTP side's pages over httpx against the real app and the real root side on a unix socket:
login and logout, a wrong password, the login rate limit, CSRF, the buttons each role sees, a job
submitted and cancelled from a page, security headers, and the webhook endpoint."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandbox.web.httpapp import CSRF_COOKIE, SESSION_COOKIE
from sandbox.web.jobs import Jobs
from tests.unit.webworld import PASSWORD, SECRET, D, World, world


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


def jobs_in(w: World) -> list[tuple[str, str, str]]:
    return [(j.kind, j.env, j.state) for j in Jobs(w.state).recent()]


def test_login_sets_a_strict_httponly_session_and_logout_ends_it(w: World) -> None:
    c = w.client()
    r = c.get("/envs")
    assert r.status_code == 303 and r.headers["location"] == "/login"
    r = c.login("dave")
    assert r.status_code == 303 and r.headers["location"] == "/envs"
    cookie = next(h for h in r.headers.get_list("set-cookie") if h.startswith(SESSION_COOKIE))
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    session = c.http.cookies[SESSION_COOKIE]
    page = c.get("/envs")
    assert page.status_code == 200
    assert "staging-1" in page.text and "dev-dave" in page.text and ">dave<" in page.text
    r = c.post("/logout", data={"csrf": c.csrf})
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert c.get("/envs").status_code == 303
    # the old session id is dead on the root side, not only forgotten by the browser
    c.http.cookies.set(SESSION_COOKIE, session)
    assert c.get("/envs").status_code == 303


def test_a_wrong_password_and_an_unknown_user_read_the_same(w: World) -> None:
    c = w.client()
    r1, r2 = c.login("dave", "wrong password!!"), c.login("nosuchuser", "wrong password!!")
    assert r1.status_code == r2.status_code == 401
    assert "wrong user name or password" in r1.text and "wrong user name or password" in r2.text
    assert SESSION_COOKIE not in c.http.cookies


def test_the_login_rate_limit_refuses_even_the_right_password(w: World) -> None:
    c = w.client()
    for _ in range(5):
        assert c.login("dave", "wrong password!!").status_code == 401
    r = c.login("dave", PASSWORD)
    assert r.status_code == 429 and "too many failed logins" in r.text and "Retry-After" in r.headers
    assert SESSION_COOKIE not in c.http.cookies


@pytest.mark.parametrize("csrf", [None, "", "x" * 43])
def test_a_form_without_the_right_csrf_token_is_refused(w: World, csrf: str | None) -> None:
    c = w.client()
    assert c.login("dave").status_code == 303
    data = {"kind": "verify", "env": "staging-1"} | ({"csrf": csrf} if csrf is not None else {})
    r = c.post("/jobs", data=data)
    assert r.status_code == 403 and "CSRF" in r.text
    assert jobs_in(w) == []
    login = w.client()
    login.get("/login")
    r = login.post("/login", data={"user": "dave", "password": PASSWORD} | ({"csrf": csrf} if csrf else {}))
    assert r.status_code == 403 and SESSION_COOKIE not in login.http.cookies


def test_a_cross_site_form_with_another_browsers_token_is_refused(w: World) -> None:
    victim, attacker = w.client(), w.client()
    assert victim.login("deployer").status_code == 303
    r = victim.post("/jobs", data={"csrf": attacker.csrf, "kind": "down", "env": "prod"})
    assert r.status_code == 403 and jobs_in(w) == []


def forms(html: str) -> set[tuple[str, str]]:
    """(env, kind) of every job button on a page (the deploy form, which names no env, aside)."""
    out = set()
    for form in re.findall(r'<form method="post" action="/jobs".*?</form>', html, re.S):
        if 'id="deploy-form"' in form:
            continue
        kind = re.search(r'name="kind" value="([a-z]+)"', form)
        env = re.search(r'name="env" value="([a-z0-9-]+)"', form)
        assert kind and env
        out.add((env.group(1), kind.group(1)))
    return out


def test_pages_show_only_the_buttons_the_role_may_press(w: World) -> None:
    seen = {}
    for who in ("viewer", "dave", "deployer"):
        c = w.client()
        assert c.login(who).status_code == 303
        seen[who] = forms(c.get("/envs").text)
        assert forms(c.get("/envs/prod").text) >= {b for b in seen[who] if b[0] == "prod"}
    assert seen["viewer"] == set()
    assert seen["dave"] == {
        ("staging-1", "verify"),
        ("dev-dave", "verify"),
        ("dev-dave", "extend"),
        ("dev-dave", "down"),
    }
    # promote, roll back and maintenance are on the env's page only (test_web_envforms.py)
    assert ("prod", "readonly") in seen["deployer"] and ("prod", "down") in seen["deployer"]
    assert not any(env == "prod" for env, _ in seen["dave"])


def test_nobody_sees_no_env_and_an_unviewable_env_is_403(w: World) -> None:
    c = w.client()
    assert c.login("nobody").status_code == 303
    r = c.get("/envs")
    assert r.status_code == 200 and "staging-1" not in r.text
    assert c.get("/envs/prod").status_code == 403
    assert c.get("/envs/nosuch").status_code == 404


def test_a_job_submitted_and_cancelled_from_the_pages(w: World) -> None:
    c = w.client()
    assert c.login("dave").status_code == 303
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "extend", "env": "dev-dave", "ttl": "3600"})
    assert r.status_code == 303 and r.headers["location"] == "/envs/dev-dave"
    assert jobs_in(w) == [("extend", "dev-dave", "queued")]
    page = c.get("/jobs").text
    job_id = Jobs(w.state).recent()[0].id
    assert f'action="/jobs/{job_id}/cancel"' in page
    r = c.post(f"/jobs/{job_id}/cancel", data={"csrf": c.csrf})
    assert r.status_code == 303 and jobs_in(w) == [("extend", "dev-dave", "cancelled")]
    # a job the role does not allow, posted by hand: 403 and nothing queued
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "down", "env": "prod"})
    assert r.status_code == 403 and len(jobs_in(w)) == 1
    # a bad value: 400 and nothing queued
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "extend", "env": "dev-dave", "ttl": "forever"})
    assert r.status_code == 400 and len(jobs_in(w)) == 1


def test_oversized_and_repeated_form_fields_are_refused(w: World) -> None:
    c = w.client()
    assert c.login("dave").status_code == 303
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "verify", "env": "x" * 20000})
    assert r.status_code == 413
    r = c.post(
        "/jobs",
        content=f"csrf={c.csrf}&kind=verify&env=staging-1&env=prod".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 400 and jobs_in(w) == []


def test_every_answer_carries_the_security_headers(w: World) -> None:
    c = w.client()
    first = c.get("/login")
    csrf = first.headers.get("set-cookie", "")
    assert csrf.startswith(CSRF_COOKIE) and "HttpOnly" in csrf and "SameSite=strict" in csrf
    for r in (first, c.get("/api/v1/envs"), c.get("/static/htmx-2.0.4.min.js")):
        assert r.headers["x-frame-options"] == "DENY"
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
    assert c.get("/static/htmx-2.0.4.min.js").status_code == 200
    login = c.get("/login")
    assert "set-cookie" not in login.headers  # the token stays the same for this browser
    assert "cdn" not in login.text.lower() and 'src="/static/htmx-2.0.4.min.js"' in login.text


def test_the_vendored_htmx_is_the_pinned_file() -> None:
    data = (Path(__file__).parents[2] / "sandbox/web/static/htmx-2.0.4.min.js").read_bytes()
    assert hashlib.sha256(data).hexdigest() == (
        "e209dda5c8235479f3166defc7750e1dbcd5a5c1808b7792fc2e6733768fb447"
    )


def test_a_signed_webhook_queues_its_pipeline_and_a_bad_one_is_refused(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOOK_SECRET", SECRET)
    c = w.client()
    body = json.dumps({"ref": "refs/heads/main", "after": "a" * 40}).encode()
    sig = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    headers = {"X-Hub-Signature-256": f"sha256={sig}", "X-GitHub-Delivery": "d-1", "X-GitHub-Event": "push"}
    r = c.post("/hooks/web", content=body, headers=headers)
    assert r.status_code == 202 and r.json()["job"] is not None
    assert jobs_in(w) == [("pipeline", "staging-aaaaaaaaaaaa", "queued")]
    assert c.post("/hooks/web", content=body, headers=headers).status_code == 409  # a replay
    bad = {**headers, "X-GitHub-Delivery": "d-2", "X-Hub-Signature-256": "sha256=" + "0" * 64}
    r = c.post("/hooks/web", content=body, headers=bad)
    assert r.status_code == 401 and "signature" in r.json()["message"]
    assert c.post("/hooks/nosuch", content=body, headers=headers).status_code == 404
    assert c.post("/hooks/web", content=b"x" * (3 * 1024 * 1024)).status_code == 413
    assert len(jobs_in(w)) == 1


def test_a_developer_creates_their_dev_env_from_the_envs_page(w: World) -> None:
    del w.views.rows["dev-dave"]
    viewer = w.client()
    assert viewer.login("viewer").status_code == 303
    assert "create dev-" not in viewer.get("/envs").text
    c = w.client()
    assert c.login("dave").status_code == 303
    page = c.get("/envs").text
    assert forms(page) == {("staging-1", "verify"), ("dev-dave", "up")}
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "up", "env": "dev-dave", "ttl": "14400"})
    assert r.status_code == 303
    job = Jobs(w.state).recent()[0]
    assert (job.kind, job.args, job.who, job.trigger) == (
        "up",
        {"env": "dev-dave", "ttl": 14400},
        "dave",
        "button",
    )
    # from any image of the store, picked in the form ("" is the profile's own)
    assert f'<option value="{D}">web:latest {D[7:19]}</option>' in page
    assert '<option value="">the profile' in page
    data = {"csrf": c.csrf, "kind": "up", "env": "dev-dave", "ttl": "14400"}
    assert c.post("/jobs", data={**data, "image": ""}).status_code == 303
    assert Jobs(w.state).recent()[0].args == {"env": "dev-dave", "ttl": 14400}
    assert c.post("/jobs", data={**data, "image": D}).status_code == 303
    assert Jobs(w.state).recent()[0].args == {"env": "dev-dave", "ttl": 14400, "image": D}
    r = c.post("/jobs", data={**data, "image": "../../etc"})
    assert r.status_code == 400 and "invalid image digest" in r.text and len(Jobs(w.state).recent()) == 3
    # on staging dave is a developer (deploy_staging); on prod only a viewer
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "up", "env": "prod-2"})
    assert r.status_code == 403 and len(Jobs(w.state).recent()) == 3


def test_a_developer_deploys_an_image_to_a_staging_env_from_the_envs_page(w: World) -> None:
    viewer = w.client()
    assert viewer.login("viewer").status_code == 303
    assert 'id="deploy-form"' not in viewer.get("/envs").text  # a viewer deploys nothing
    c = w.client()
    assert c.login("dave").status_code == 303
    page = c.get("/envs").text
    assert 'id="deploy-form"' in page and "(profiles dev, staging)" in page
    assert f'<option value="{D}">' in page
    form = {"csrf": c.csrf, "kind": "up", "image": D}
    assert c.post("/jobs", data={**form, "env": "staging-7"}).status_code == 303
    job = Jobs(w.state).recent()[0]
    assert (job.kind, job.args, job.who) == ("up", {"env": "staging-7", "image": D}, "dave")
    r = c.post("/jobs", data={**form, "env": "prod-3"})  # dave only views prod
    assert r.status_code == 403 and "may not run up on prod-3" in r.text
    r = c.post("/jobs", data={**form, "env": "../etc"})
    assert r.status_code == 400 and "invalid environment name" in r.text
    assert len(Jobs(w.state).recent()) == 1

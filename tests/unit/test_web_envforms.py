"""The env page's job forms over httpx against the real app and root side: promote (the exact
verified digest, shown on a confirm page), roll back to a kept release (disabled when its image is
gone), maintenance with an allowlist, read-only, extend by hours, down; each role sees only its own;
bad input is one 400 and queues nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.promote.deploys import Deploys
from sandbox.web.jobs import Jobs
from tests.unit.test_web_pages import forms, jobs_in
from tests.unit.webworld import D, World, world

E = "sha256:" + "e" * 64  # staging-1's image, verified there
G = "sha256:" + "0" * 64  # an old release of prod, gone from the store


@pytest.fixture
def w(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for wo in world(tmp_path):
        wo.views.rows["staging-1"]["image"] = E
        images = [{"digest": d, "refs": [], "recipe": "web", "packages": 1, "files": 2} for d in (D, E)]
        monkeypatch.setattr(wo.views, "images", lambda images=images: images)
        deploys = Deploys(wo.state)
        deploys.record_verification(E, "staging-1", True, "healthy, smoke passed")
        for old, new in ((G, E), (E, D)):  # prod ran G, then E, and runs D now
            d = deploys.begin("prod", old, new, "rolling")
            deploys.finish(d.id, "done")
        yield wo


def page_of(w: World, who: str, url: str) -> tuple[Any, str]:
    c = w.client()
    assert c.login(who).status_code == 303
    r = c.get(url)
    assert r.status_code == 200, r.text
    return c, r.text


def links(html: str) -> set[str]:
    return set(re.findall(r'href="(/envs/[a-z0-9-]+/(?:promote|maintenance)[^"]*)"', html))


def test_each_role_sees_only_its_forms_on_the_env_page(w: World) -> None:
    _, viewer = page_of(w, "viewer", "/envs/prod")
    assert forms(viewer) == set() and links(viewer) == set() and "disabled" not in viewer
    _, dave = page_of(w, "dave", "/envs/prod")  # a developer on staging and dev, a viewer on prod
    assert forms(dave) == set() and links(dave) == set() and "Roll back" not in dave
    _, dave_staging = page_of(w, "dave", "/envs/staging-1")
    assert forms(dave_staging) == {("staging-1", "verify")} and links(dave_staging) == set()
    _, dep = page_of(w, "deployer", "/envs/prod")
    assert forms(dep) == {("prod", k) for k in ("verify", "resume", "readonly", "extend", "down", "rollback")}
    assert links(dep) == {"/envs/prod/promote?source=staging-1", "/envs/prod/maintenance"}
    # dev-dave runs D, which prod runs too and which was never verified there: shown, disabled
    assert "dev-dave&#39;s image has not been verified there" in dep
    # the kept releases: E (in the store) can be pressed, G (gone) is disabled with the reason
    assert f'name="image" value="{E}"' in dep and f'name="image" value="{G}"' not in dep
    assert "its image is gone from the store" in dep
    # the envs list keeps the one-press buttons and links to the page for the rest
    _, envs = page_of(w, "deployer", "/envs")
    assert ("prod", "rollback") not in forms(envs) and ("prod", "extend") in forms(envs)
    assert 'href="/envs/prod#actions"' in envs


def test_the_promote_confirm_page_shows_the_exact_verified_digest(w: World) -> None:
    c, html = page_of(w, "deployer", "/envs/prod/promote?source=staging-1")
    assert f'<code id="promote-digest">{E}</code>' in html and "healthy, smoke passed" in html
    assert f'name="image" value="{E}"' in html and 'name="source" value="staging-1"' in html
    r = c.post(
        "/jobs", data={"csrf": c.csrf, "kind": "promote", "env": "prod", "source": "staging-1", "image": E}
    )
    assert r.status_code == 303
    job = Jobs(w.state).recent()[0]
    assert (job.kind, job.args) == ("promote", {"env": "prod", "source": "staging-1", "image": E})
    # not from an unverified source, not from an unknown one, not by a developer
    assert c.get("/envs/prod/promote?source=dev-dave").status_code == 409
    assert c.get("/envs/prod/promote?source=nosuch").status_code == 404
    dave, _ = page_of(w, "dave", "/envs")
    assert dave.get("/envs/prod/promote?source=staging-1").status_code == 403
    # a failed verify after the passed one: disabled with the reason
    Deploys(w.state).record_verification(E, "staging-1", False, "smoke `true` exited 1")
    _, html = page_of(w, "deployer", "/envs/prod")
    assert "/envs/prod/promote?source=staging-1" not in html and "the latest verify of staging-1" in html
    assert c.get("/envs/prod/promote?source=staging-1").status_code == 409


def test_rolling_back_to_a_release_whose_image_is_gone_is_refused(w: World) -> None:
    c, _ = page_of(w, "deployer", "/envs/prod")
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "rollback", "env": "prod", "image": G})
    assert r.status_code == 409 and "is gone from the store" in r.text and jobs_in(w) == []
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "rollback", "env": "prod", "image": E})
    assert r.status_code == 303 and Jobs(w.state).recent()[0].args == {"env": "prod", "image": E}
    # the API refuses it alike
    r = c.post(
        "/api/v1/jobs",
        json={"kind": "rollback", "args": {"env": "prod", "image": G}},
        headers=w.api("deployer"),
    )
    assert r.status_code == 409 and len(jobs_in(w)) == 1


@pytest.mark.parametrize(
    ("allow", "message"),
    [
        ("10.0.0.1 not-an-ip", "invalid address &#39;not-an-ip&#39; in allow"),
        ("10.0.0.0/33", "invalid address &#39;10.0.0.0/33&#39; in allow"),
        (" ".join(f"10.0.0.{i}" for i in range(65)), "invalid allow list"),
    ],
)
def test_a_bad_allowlist_is_one_400_and_queues_nothing(w: World, allow: str, message: str) -> None:
    c, _ = page_of(w, "deployer", "/envs/prod/maintenance")
    r = c.post(
        "/jobs", data={"csrf": c.csrf, "kind": "maintenance", "env": "prod", "on": "true", "allow": allow}
    )
    assert r.status_code == 400 and message in r.text, r.text
    assert jobs_in(w) == []


def test_maintenance_on_with_an_allowlist_then_off(w: World) -> None:
    c, html = page_of(w, "deployer", "/envs/prod/maintenance")
    assert 'name="allow"' in html and 'name="on" value="true"' in html
    data = {
        "csrf": c.csrf,
        "kind": "maintenance",
        "env": "prod",
        "on": "true",
        "allow": "127.0.0.2, 10.0.0.0/8",
    }
    assert c.post("/jobs", data=data).status_code == 303
    assert Jobs(w.state).recent()[0].args == {"env": "prod", "on": True, "allow": ["127.0.0.2", "10.0.0.0/8"]}
    w.views.rows["prod"]["maintenance"] = ["127.0.0.2", "10.0.0.0/8"]  # what the worker's job did
    w.views.rows["prod"]["readonly"] = True
    html = c.get("/envs/prod").text
    assert "on, let through: 127.0.0.2, 10.0.0.0/8" in html and "maintenance off" in html
    assert "/envs/prod/maintenance" not in html and "read-only off" in html
    assert re.search(
        r'name="kind" value="maintenance">\s*<input type="hidden" name="env" value="prod">\s*'
        r'<input type="hidden" name="on" value="false">',
        html,
    )
    dave, _ = page_of(w, "dave", "/envs")
    assert dave.get("/envs/prod/maintenance").status_code == 403


@pytest.mark.parametrize("hours", ["0", "721", "abc", "-1", "1.5", "9" * 5000, ""])
def test_a_bad_number_of_hours_is_one_400_and_queues_nothing(w: World, hours: str) -> None:
    c, _ = page_of(w, "dave", "/envs/dev-dave")
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "extend", "env": "dev-dave", "hours": hours})
    assert r.status_code == 400 and "hours must be a whole number from 1 to 720" in r.text
    assert jobs_in(w) == []


def test_extend_by_hours(w: World) -> None:
    c, html = page_of(w, "dave", "/envs/dev-dave")
    assert '<select name="hours">' in html
    r = c.post("/jobs", data={"csrf": c.csrf, "kind": "extend", "env": "dev-dave", "hours": "24"})
    assert r.status_code == 303 and Jobs(w.state).recent()[0].args == {"env": "dev-dave", "ttl": 86400}


def test_a_live_page_carries_the_feed_cursor_its_data_was_read_at(w: World) -> None:
    c, _ = page_of(w, "deployer", "/envs")
    before = w.root.feed.last_id()
    html = c.get("/envs/prod").text
    m = re.search(r'<meta name="sbx-feed" content="(\d+)">', html)
    assert m and int(m.group(1)) == before
    job = Jobs(w.state).submit("verify", {"env": "prod"}, who="root", trigger="cli")  # after the render
    cred = {"token": w.tokens["deployer"]}
    rows = w.root.handle("events", cred, "127.0.0.1", {"after": int(m.group(1)), "wait": 0})["events"]
    assert [(r["kind"], r["data"]["id"]) for r in rows] == [("job", job.id)]
    for url in ("/envs", "/jobs", "/deploys"):
        assert '<meta name="sbx-feed" content="' in c.get(url).text
    assert '<meta name="sbx-feed"' not in c.get("/envs/prod/maintenance").text

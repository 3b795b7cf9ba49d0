"""The images page and the image diff (`/images`, `/images/diff`, `GET /api/v1/images/diff`, the RPC
method `image_diff`) over the real app and root side, with real images in a real store (built by
imagefactory: real layer tars, no mmdebstrap). Only the env rows are fake (webworld)."""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.promote.diffview import image_diff_view
from sandbox.store import ImageStore
from sandbox.web import views as views_mod
from sandbox.web.views import ImageViews
from tests.unit.imagefactory import Image, make_image
from tests.unit.webworld import World, world

NASTY = "srv/app/<img src=x onerror=alert(1)>&.py"  # a file name the page must print, not parse
NASTY_PKG = "<script>alert(1)</script>"


class Imgs:
    def __init__(self, store: ImageStore, old: Image, new: Image, other: Image) -> None:
        self.store, self.old, self.new, self.other = store, old, new, other


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    yield from world(tmp_path)


def later(img: Image, store: ImageStore) -> Image:
    """`img` made an hour later (imagefactory dates every image alike), under the same tags."""
    manifest = {**img.manifest, "created": img.manifest["created"] + 3600}
    digest = store.put_manifest(manifest)
    store.set_ref(manifest["recipe"]["name"], "latest", digest)
    store.remove(img.digest)
    return Image(digest, img.base, img.app, manifest)


@pytest.fixture
def imgs(w: World, tmp_path: Path) -> Imgs:
    store = ImageStore(tmp_path / "images")
    old = make_image(store, tmp_path / "trees", "web", tags=("v1",))
    new = later(
        make_image(
            store,
            tmp_path / "trees",
            "web",
            tags=("latest",),
            app_files={"srv/app/main.py": b"print('hello, 2')\n", NASTY: b"x" * 3000},
            packages={"base-files": "12.4", "libc6": "2.36-10", NASTY_PKG: "1<2"},
        ),
        store,
    )
    other = make_image(store, tmp_path / "trees", "api", app_files={"srv/api.py": b"1\n"})
    w.views.image_views = ImageViews(store.root)
    w.views.rows["prod"]["image"] = old.digest
    w.views.rows["staging-1"]["instances"][0]["image"] = new.digest
    return Imgs(store, old, new, other)


def diff_url(a: str, b: str, api: bool = False) -> str:
    return f"{'/api/v1' if api else ''}/images/diff?a={a}&b={b}"


def test_the_api_answers_what_the_cli_prints(w: World, imgs: Imgs) -> None:
    r = w.client().get(diff_url(imgs.old.digest, imgs.new.digest, api=True), headers=w.api("viewer"))
    assert r.status_code == 200, r.text
    d: dict[str, Any] = r.json()
    # `sandbox image diff A B --limit 2000 --json` prints image_diff_view(store, A, B, limit=2000)
    assert d == image_diff_view(imgs.store, imgs.old.digest, imgs.new.digest, limit=2000)
    assert d["packages"]["changed"] == {"libc6": {"from": "2.36-9", "to": "2.36-10"}}
    assert d["packages"]["added"] == {NASTY_PKG: "1<2"}
    assert d["files"] == {"added": ["/" + NASTY], "removed": [], "changed": ["/srv/app/main.py"]}
    assert d["sizes"]["/" + NASTY] == [None, 3000]
    assert d["sizes"]["/srv/app/main.py"] == [15, 18]
    assert d["total"]["files"] == {"added": 1, "removed": 0, "changed": 1}
    assert d["plan"]["strategy"] == "rolling" and "2 system package(s) changed" in d["plan"]["reasons"]


def test_image_diff_by_role(w: World, imgs: Imgs) -> None:
    c = w.client()
    url = diff_url(imgs.old.digest, imgs.new.digest, api=True)
    for who in ("viewer", "dave", "deployer", "admin"):
        assert c.get(url, headers=w.api(who)).status_code == 200, who
    r = c.get(url, headers=w.api("nobody"))
    assert r.status_code == 403 and r.json()["message"] == "you hold no role"
    assert c.get(url).status_code == 401


BAD_QUERIES = [
    ("a=sha256:abc&b={b}", 400, "is not an image digest"),
    ("a={A}&b={b}", 400, "is not an image digest"),  # upper case hex
    ("a=web:latest&b={b}", 400, "is not an image digest"),
    ("a={a}", 400, "give the two images"),
    ("a={a}&b={b}&b={b}", 400, "give the two images"),
    ("a={a}&b={b}&c=1", 400, "give the two images"),
    ("a={a}&b=sha256:" + "e" * 64, 404, "not found"),
]


def test_bad_diff_queries_are_refused_clearly(w: World, imgs: Imgs) -> None:
    c = w.client()
    for query, status, needle in BAD_QUERIES:
        q = query.format(a=imgs.old.digest, b=imgs.new.digest, A=imgs.old.digest.upper())
        r = c.get(f"/api/v1/images/diff?{q}", headers=w.api("viewer"))
        assert r.status_code == status, (query, r.text)
        assert needle in r.json()["message"], query


def test_one_image_twice_is_the_empty_diff(w: World, imgs: Imgs) -> None:
    q = f"a={imgs.old.digest}&b={imgs.old.digest}"
    r = w.client().get(f"/api/v1/images/diff?{q}", headers=w.api("viewer"))
    assert r.status_code == 200, r.text
    d = r.json()
    assert not any(d["packages"][k] for k in ("added", "removed", "changed"))
    assert not any(d["files"][k] for k in ("added", "removed", "changed"))


def test_the_rpc_checks_its_arguments_itself(w: World, imgs: Imgs) -> None:
    from sandbox.web.rpcproto import RPCError

    cred = {"token": w.tokens["viewer"]}
    for args in ({}, {"a": 1, "b": imgs.new.digest}, {"a": imgs.old.digest, "b": ["x"]}):
        with pytest.raises(RPCError) as e:
            w.root.handle("image_diff", cred, "127.0.0.1", args)
        assert e.value.status == 400


def test_a_diff_is_cached_until_an_image_is_removed(w: World, imgs: Imgs) -> None:
    views = w.views.image_views
    assert views is not None
    first = views.image_diff(imgs.old.digest, imgs.new.digest)
    assert views.image_diff(imgs.old.digest, imgs.new.digest) is first
    imgs.store.remove(imgs.new.digest)
    r = w.client().get(diff_url(imgs.old.digest, imgs.new.digest, api=True), headers=w.api("viewer"))
    assert r.status_code == 404


def test_a_capped_diff_says_how_much_it_left_out(
    w: World, imgs: Imgs, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(views_mod, "DIFF_LIMIT", 1)
    c = w.client()
    d = c.get(diff_url(imgs.old.digest, imgs.other.digest, api=True), headers=w.api("viewer")).json()
    assert d["limit"] == 1
    assert d["files"]["removed"] == ["/srv/app"] and d["total"]["files"]["removed"] == 2  # and main.py
    assert d["files"]["added"] == ["/srv/api.py"] and d["total"]["files"]["added"] == 1
    assert c.login("viewer").status_code == 303
    page = c.get(diff_url(imgs.old.digest, imgs.other.digest))
    assert page.status_code == 200
    assert "and 1 more, not listed (at most 1 of each kind)" in page.text


def test_the_images_page_lists_images_and_the_envs_that_run_them(w: World, imgs: Imgs) -> None:
    c = w.client()
    assert c.get("/images").status_code == 303
    assert c.login("viewer").status_code == 303
    r = c.get("/images")
    assert r.status_code == 200
    assert '<a href="/images">images</a>' in r.text  # in the nav
    rows = {row.split("</td>")[2]: row for row in r.text.split("<tr>")[2:]}
    old_row = next(v for k, v in rows.items() if imgs.old.digest[7:19] in k)
    new_row = next(v for k, v in rows.items() if imgs.new.digest[7:19] in k)
    assert "web:v1" in old_row and '<a href="/envs/prod">prod</a>' in old_row
    assert "web:latest" in new_row and '<a href="/envs/staging-1">staging-1</a>' in new_row
    assert f"/images/diff?a={imgs.old.digest.replace(':', '%3A')}&amp;b=" in new_row  # vs. the previous
    assert "diff with the previous" not in old_row  # nothing older of its recipe
    # the form picks two images and GETs /images/diff
    assert 'action="/images/diff"' in r.text and r.text.count("<select") == 2


def test_the_diff_page_shows_changes_escaped(w: World, imgs: Imgs) -> None:
    c = w.client()
    assert c.login("viewer").status_code == 303
    r = c.get(diff_url(imgs.old.digest, imgs.new.digest))
    assert r.status_code == 200
    assert NASTY_PKG not in r.text and "<img" not in r.text
    assert html.escape(NASTY_PKG, quote=False) in r.text
    assert html.escape("/" + NASTY, quote=False) in r.text
    assert "<td>1&lt;2</td>" in r.text
    assert "<td>libc6</td><td>2.36-9</td><td>2.36-10</td>" in r.text
    assert "<td>-</td><td>2.9 KB</td>" in r.text  # the added file's sizes in A and B
    assert 'would pick <strong class="badge">rolling</strong>' in r.text
    assert "</code> web:v1, " in r.text and "</code> web:latest, " in r.text


def test_the_diff_page_refuses_bad_input_with_one_message(w: World, imgs: Imgs) -> None:
    c = w.client()
    assert c.login("viewer").status_code == 303
    for query, status in [
        ("", 400),
        ("a=sha256:nothex&b={a}", 400),
        ("a={a}&b=sha256:" + "e" * 64, 404),
    ]:
        r = c.get(f"/images/diff?{query.format(a=imgs.old.digest)}")
        assert r.status_code == status, query
        assert r.text.count('class="error"') == 1, query


def test_no_role_no_images(w: World, imgs: Imgs) -> None:
    c = w.client()
    assert c.login("nobody").status_code == 303
    assert c.get("/images").status_code == 403
    assert c.get(diff_url(imgs.old.digest, imgs.new.digest)).status_code == 403


def test_the_image_rows_are_kept_but_refs_and_removals_are_seen(w: World, imgs: Imgs) -> None:
    views = w.views.image_views
    assert views is not None
    assert {i["digest"] for i in views.images()} == {imgs.old.digest, imgs.new.digest, imgs.other.digest}
    assert views.images() == [dict(s.__dict__) for s in imgs.store.summaries()]  # what the CLI prints
    imgs.store.set_ref("web", "prod", imgs.old.digest)
    imgs.store.remove(imgs.other.digest)
    rows = {i["digest"]: i for i in views.images()}
    assert set(rows) == {imgs.old.digest, imgs.new.digest}
    assert rows[imgs.old.digest]["refs"] == ["web:prod", "web:v1"]
    assert set(views._rows) == set(rows)

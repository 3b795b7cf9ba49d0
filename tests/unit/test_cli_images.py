"""`sandbox images`, `sandbox image inspect|diff|verify|rm` and `sandbox build` errors via CliRunner."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from imagefactory import Image, make_image

from sandbox.cli import build_cmds, image_cmds  # noqa: F401  (importing registers the commands)
from sandbox.cli.main import cli
from sandbox.store.packed import packed_copy
from sandbox.store.store import ImageStore


@dataclass
class Ws:
    root: Path
    store: ImageStore
    web: Image
    api: Image

    def run(self, *args: str) -> Result:
        return CliRunner().invoke(cli, ["-C", str(self.root), *args], catch_exceptions=False)

    def json(self, *args: str) -> Any:
        r = self.run(*args, "--json")
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)


@pytest.fixture
def ws(tmp_path: Path) -> Ws:
    root = tmp_path / "ws"
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / "web.yaml").write_text("name: web\n")
    (root / "recipes" / "api.yaml").write_text("name: api\n")
    store = ImageStore(root / "images")
    web = make_image(store, tmp_path / "trees", "web", tags=("latest", "v1"))
    api = make_image(
        store,
        tmp_path / "trees",
        "api",
        app_files={"srv/app/main.py": b"print('api')\n", "srv/app/extra.py": b"x = 1\n"},
        packages={"base-files": "12.4", "libc6": "2.36-10", "python3": "3.11.2-1"},
    )
    return Ws(root, store, web, api)


def assert_error(r: Result, *needles: str) -> None:
    assert r.exit_code == 1, r.output
    assert "error:" in r.stderr
    assert "hint:" in r.stderr
    for n in needles:
        assert n in r.stderr


# -- images -----------------------------------------------------------------


def test_images_json_lists_all(ws: Ws) -> None:
    rows = ws.json("images")
    by_digest = {row["digest"]: row for row in rows}
    assert set(by_digest) == {ws.web.digest, ws.api.digest}
    web = by_digest[ws.web.digest]
    assert web["recipe"] == "web"
    assert web["refs"] == ["web:latest", "web:v1"]
    assert web["packages"] == 2
    assert web["files"] == len(ws.web.manifest["files"])
    assert web["size"] == sum(layer["size"] for layer in ws.web.manifest["layers"])
    assert by_digest[ws.api.digest]["refs"] == ["api:latest"]


def test_global_json_flag_works_too(ws: Ws) -> None:
    r = CliRunner().invoke(cli, ["--json", "-C", str(ws.root), "images"])
    assert r.exit_code == 0
    assert len(json.loads(r.stdout)) == 2


def test_images_text(ws: Ws) -> None:
    r = ws.run("images")
    assert r.exit_code == 0
    assert ws.web.digest[7:19] in r.stdout
    assert "web:latest," in r.stdout and "web:v1" in r.stdout  # rich may wrap the cell


def test_images_empty_store(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "images", "--json"])
    assert r.exit_code == 0
    assert json.loads(r.stdout) == []
    r = CliRunner().invoke(cli, ["-C", str(tmp_path), "images"])
    assert "no images yet" in r.stdout


# -- inspect ----------------------------------------------------------------


def test_inspect_json(ws: Ws) -> None:
    m = ws.json("image", "inspect", "web")
    assert m["digest"] == ws.web.digest
    assert [la["kind"] for la in m["layers"]] == ["base", "app"]
    assert [la["digest"] for la in m["layers"]] == [ws.web.base, ws.web.app]
    assert m["files"] == len(ws.web.manifest["files"])  # a count without --files
    assert m["packages"] == ws.web.manifest["packages"]


def test_inspect_with_files_and_other_refs(ws: Ws) -> None:
    m = ws.json("image", "inspect", "--files", ws.api.digest[7:19])
    assert m["digest"] == ws.api.digest
    assert m["files"] == ws.api.manifest["files"]
    assert ws.json("image", "inspect", "web:v1")["digest"] == ws.web.digest
    assert ws.json("image", "inspect", ws.web.digest)["digest"] == ws.web.digest


def test_inspect_text(ws: Ws) -> None:
    r = ws.run("image", "inspect", "web")
    assert r.exit_code == 0
    assert ws.web.digest in r.stdout
    assert "bookworm" in r.stdout
    assert ws.web.base[:19] in r.stdout


def test_unknown_ref_is_error_with_hint(ws: Ws) -> None:
    r = ws.run("image", "inspect", "nosuch")
    assert_error(r, "nosuch", "sandbox build nosuch")
    assert r.stdout == ""


def test_unknown_ref_json(ws: Ws) -> None:
    r = ws.run("image", "inspect", "nosuch", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["error"] == "NotFound"
    assert "nosuch" in doc["message"]
    assert doc["hint"] == "build it with `sandbox build nosuch`"


def test_malformed_ref_is_error(ws: Ws) -> None:
    assert_error(ws.run("image", "inspect", "Not/A:Ref"), "not an image reference")


# -- diff -------------------------------------------------------------------


def test_diff_json(ws: Ws) -> None:
    d = ws.json("image", "diff", "web", "api")
    assert d["a"] == ws.web.digest and d["b"] == ws.api.digest
    assert d["identical"] is False
    assert d["packages"]["added"] == {"python3": "3.11.2-1"}
    assert d["packages"]["changed"] == {"libc6": {"from": "2.36-9", "to": "2.36-10"}}
    assert d["packages"]["removed"] == {}
    assert d["files"]["added"] == ["/srv/app/extra.py"]
    assert d["files"]["changed"] == ["/srv/app/main.py"]
    assert d["files"]["removed"] == []


def test_diff_limit_sizes_and_plan(ws: Ws) -> None:
    full = ws.json("image", "diff", "web", "api")
    assert full["limit"] is None and full["sizes"]["/srv/app/extra.py"] == [None, 6]
    assert full["plan"]["strategy"] == "rolling"
    capped = ws.json("image", "diff", "web", "api", "--limit", "1")
    assert capped["total"] == full["total"] and capped["total"]["packages"]["changed"] == 1
    assert capped["files"]["added"] == ["/srv/app/extra.py"] and capped["limit"] == 1
    text = ws.run("image", "diff", "web", "api", "--limit", "1").stdout
    assert "promotion would pick: rolling" in text
    assert ws.run("image", "diff", "web", "api", "--limit", "0").exit_code == 2


def test_diff_same_image_identical(ws: Ws) -> None:
    assert ws.json("image", "diff", "web", "web:v1")["identical"] is True
    r = ws.run("image", "diff", "web", "web:v1")
    assert "identical" in r.stdout


def test_diff_unknown_ref(ws: Ws) -> None:
    assert_error(ws.run("image", "diff", "web", "nosuch"), "nosuch")


# -- verify -----------------------------------------------------------------


def test_verify_ok(ws: Ws) -> None:
    r = ws.run("image", "verify", "web")
    assert r.exit_code == 0, r.output
    assert "ok" in r.stdout
    report = ws.json("image", "verify", "api")
    assert report["ok"] is True and report["problems"] == []
    assert report["digest"] == ws.api.digest


def test_verify_corrupt_blob_exit_1(ws: Ws) -> None:
    path = ws.store.blob_path(ws.web.app)
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF
    path.write_bytes(bytes(data))
    r = ws.run("image", "verify", "web", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert any("corrupt" in p for p in report["problems"])
    r = ws.run("image", "verify", "web")
    assert r.exit_code == 1
    assert "corrupt" in r.stdout
    assert ws.run("image", "verify", "api").exit_code == 0  # the other image is untouched


# -- rm ---------------------------------------------------------------------


def test_rm(ws: Ws) -> None:
    out = ws.json("image", "rm", "web")
    assert out == [{"digest": ws.web.digest, "removed_layers": [ws.web.app]}]
    assert not ws.store.manifest_path(ws.web.digest).exists()
    assert ws.store.blob_path(ws.web.base).is_file()  # shared with api
    assert [row["digest"] for row in ws.json("images")] == [ws.api.digest]
    assert_error(ws.run("image", "inspect", "web:v1"), "web:v1")


def test_images_counts_and_rm_removes_the_compressed_copies_for_shipping(ws: Ws, tmp_path: Path) -> None:
    for blob in (ws.web.base, ws.web.app):
        packed_copy(ws.store, "gzip", blob, tmp_path)
    assert "compressed copies kept for shipping to hosts: 2," in ws.run("images").stdout
    ws.json("image", "rm", "web")
    assert [p.name[:64] for p, _ in ws.store.packed()] == [ws.web.base[7:]]  # api uses the base
    ws.json("image", "rm", "api")
    assert ws.store.packed() == [] and "compressed copies" not in ws.run("images").stdout


def test_rm_all_refs_resolve_before_anything_is_removed(ws: Ws) -> None:
    r = ws.run("image", "rm", "api", "nosuch")
    assert_error(r, "nosuch")
    assert ws.store.manifest_path(ws.api.digest).is_file()
    assert len(ws.json("images")) == 2


def test_rm_needs_a_ref(ws: Ws) -> None:
    r = ws.run("image", "rm")
    assert r.exit_code == 2


def test_rm_two_refs_to_one_image(ws: Ws) -> None:
    r = ws.run("image", "rm", "web", "web:v1")
    assert r.exit_code == 0, r.output
    assert not ws.store.manifest_path(ws.web.digest).exists()


# -- build errors -------------------------------------------------------------


def test_build_unknown_recipe_lists_recipes(ws: Ws) -> None:
    r = ws.run("build", "nosuchrecipe")
    assert_error(r, "nosuchrecipe")
    assert "recipes here: api, web" in r.stderr.replace("\n", " ")


def test_build_unknown_recipe_json(ws: Ws) -> None:
    r = ws.run("build", "nosuchrecipe", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["error"] == "NotFound"
    assert doc["hint"] == "recipes here: api, web"

"""`sandbox build` compresses a new image's layers once when a profile ships its recipe to hosts
(sandbox/envs/prepack.py): which codec (none without hosts, none for another recipe, none with
`compression: none`, a broken profile skipped), and the kept copies a ship then finds."""

from __future__ import annotations

from pathlib import Path

from sandbox.envs.prepack import prepack, shipped_codec
from sandbox.events import Recorder
from sandbox.settings import load_settings
from sandbox.store import ImageStore
from sandbox.workspace import Workspace
from tests.unit.imagefactory import make_image

PROD = """\
name: prod
recipe: web
backend: lxc
hosts:
  - {name: web1, ssh: root@10.0.0.11}
"""


def ws_with(tmp_path: Path, profiles: dict[str, str], settings: str = "") -> Workspace:
    root = tmp_path / "ws"
    (root / "profiles").mkdir(parents=True)
    (root / "recipes").mkdir()
    for name, text in profiles.items():
        (root / "profiles" / f"{name}.yaml").write_text(text)
    if settings:
        (root / "sandbox.yaml").write_text(settings)
    return Workspace(root)


def test_only_a_recipe_a_profile_puts_on_hosts_is_packed(tmp_path: Path) -> None:
    ws = ws_with(tmp_path, {"prod": PROD, "broken": "name: [", "staging": "name: staging\nrecipe: web\n"})
    assert shipped_codec(ws, load_settings(ws), "web") == "zstd"
    assert shipped_codec(ws, load_settings(ws), "api") is None
    local = ws_with(tmp_path / "2", {"staging": "name: staging\nrecipe: web\n"})
    assert shipped_codec(local, load_settings(local), "web") is None
    none = ws_with(tmp_path / "3", {"prod": PROD}, "hosts:\n  compression: none\n")
    assert shipped_codec(none, load_settings(none), "web") is None


def test_prepack_keeps_a_copy_of_each_layer_once(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    img = make_image(store, tmp_path / "work", app_files={"srv/app/main.py": b"x = 1\n" * 4000})
    rec = Recorder()
    first = prepack(store, img.digest, "gzip", rec)
    layers = [layer["digest"] for layer in store.manifest(img.digest)["layers"]]
    assert sorted(first) == sorted(layers) and set(first.values()) == {"made"}
    assert set(prepack(store, img.digest, "gzip", rec).values()) == {"kept"}
    kept = sorted(
        p.name.split("-")[0] for p in store.packed_dir("gzip").iterdir() if not p.name.startswith(".")
    )
    assert kept == sorted(d[7:] for d in layers)
    assert not list(store.root.glob(".prepack-*"))  # the temp dir is gone
    assert any("compressing the layers" in e.message for e in rec.events)

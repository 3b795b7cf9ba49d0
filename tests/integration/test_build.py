"""The real build: mmdebstrap, overlayfs, the store. One shared build plus a few targeted ones."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.integration.conftest import Built, mounts_below, new_workspace, sandbox, snapshot

pytestmark = pytest.mark.integration


def _member(ws: Path, manifest: dict, layer: str, path: str) -> bytes:
    digest = next(la["digest"] for la in manifest["layers"] if la["kind"] == layer)
    blob = ws / "images" / "blobs" / "sha256" / digest.removeprefix("sha256:")
    with tarfile.open(blob) as tar:
        f = tar.extractfile("." + path)
        assert f is not None
        return f.read()


def test_web_image_has_what_the_recipe_asks(built: Built) -> None:
    m = built.manifest()
    assert {"python3-flask", "gunicorn", "systemd-sysv", "cron", "sudo"} <= set(m["packages"])
    files = m["files"]
    assert files["/srv/app/app.py"]["uid"] == 1001
    assert files["/srv/app/settings.py"]["mode"] == "0640"
    assert files["/etc/sudoers.d/sandbox-app"]["mode"] == "0440"
    assert files["/home/app/.ssh/authorized_keys"]["mode"] == "0600"
    assert files["/etc/systemd/system/multi-user.target.wants/sandbox-app.service"]["type"] == "symlink"
    assert "/etc/machine-id" not in files
    assert not [p for p in files if p.startswith("/var/lib/apt/lists/") and files[p]["type"] == "file"]
    passwd = _member(built.ws, m, "app", "/etc/passwd").decode()
    assert "app:x:1001:1001::/home/app:/bin/bash" in passwd
    sudoers = _member(built.ws, m, "app", "/etc/sudoers.d/sandbox-app").decode()
    assert "app ALL=(root) NOPASSWD: /usr/bin/systemctl reload sandbox-app.service" in sudoers
    cron = _member(built.ws, m, "app", "/etc/cron.d/app-cleanup").decode()
    assert "*/15 * * * * app python3 /srv/app/manage.py cleanup" in cron
    assert 'MAILTO=""' in cron or "MAILTO=" in cron
    keys = _member(built.ws, m, "app", "/home/app/.ssh/authorized_keys").decode()
    assert keys.startswith("ssh-ed25519 ")
    settings = _member(built.ws, m, "app", "/srv/app/settings.py").decode()
    assert 'GREETING = "Hello from sandbox"' in settings and "WORKERS = 2" in settings
    unit = _member(built.ws, m, "app", "/etc/systemd/system/sandbox-app.service").decode()
    assert "User=app" in unit and "ExecStart=/usr/local/bin/sandbox-app" in unit


def test_lock_pins_every_installed_package(built: Built) -> None:
    import json

    lock = json.loads((built.ws / "recipes" / "web.lock").read_text())
    m = built.manifest()
    assert {p["name"]: p["version"] for p in lock["packages"]} == m["packages"]
    assert all(len(p["sha256"]) == 64 for p in lock["packages"])
    status = _member(built.ws, m, "base", "/var/lib/dpkg/status").decode()
    installed = {blk.split("\n", 1)[0].removeprefix("Package: ") for blk in status.strip().split("\n\n")}
    assert installed == set(m["packages"])


def test_verify_recomputes_every_digest(built: Built) -> None:
    r = sandbox(built.ws, "image", "verify", "web", "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["ok"] and r.json["checked_files"] > 5000


def test_unchanged_recipe_is_a_noop(built: Built) -> None:
    before = snapshot(built.ws / "images" / "blobs")
    r = sandbox(built.ws, "build", "web", "--json")
    assert r.code == 0, r.stderr
    assert r.json["digest"] == built.digest
    assert r.json["cached"] == {"base": True, "app": True, "image": True}
    assert snapshot(built.ws / "images" / "blobs") == before


def test_template_change_rebuilds_only_the_app_layer(built: Built) -> None:
    tpl = built.ws / "recipes" / "web" / "templates" / "settings.py.j2"
    original = tpl.read_text()
    tpl.write_text(original.replace("WORKERS", "WORKERS_CHANGED"))
    try:
        r = sandbox(built.ws, "build", "web", "--json")
        assert r.code == 0, r.stderr
        assert r.json["cached"]["base"] is True and r.json["cached"]["app"] is False
        assert r.json["digest"] != built.digest
        assert r.json["layers"][0] == built.result["layers"][0]
        d = sandbox(built.ws, "image", "diff", built.digest, r.json["digest"], "--json")
        assert d.code == 0
        assert d.json["files"]["changed"] == ["/srv/app/settings.py"]
        assert d.json["packages"] == {"added": {}, "removed": {}, "changed": {}}
    finally:
        tpl.write_text(original)
        assert sandbox(built.ws, "build", "web").code == 0


def test_two_builds_from_one_lock_are_identical_and_offline(built: Built, tmp_path: Path) -> None:
    """A second, empty store, no network at all (a fresh net namespace): same image digest."""
    ws = new_workspace(tmp_path, "again")
    (ws / "recipes" / "web.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    r = sandbox(ws, "build", "web", "--locked", "--json", prefix=("unshare", "--net"))
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["digest"] == built.digest
    assert r.json["layers"] == built.result["layers"]
    assert mounts_below(ws) == []


def test_locked_build_refuses_a_changed_recipe(built: Built) -> None:
    recipe = built.ws / "recipes" / "web.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace("  - sudo\n", "  - sudo\n  - curl\n"))
    before = snapshot(built.ws / "images")
    try:
        r = sandbox(built.ws, "build", "web", "--locked")
        assert r.code == 1
        assert "no longer matches" in r.stderr and "sandbox lock web" in r.stderr
        assert snapshot(built.ws / "images") == before
    finally:
        recipe.write_text(original)


def test_unknown_package_is_named_with_its_line(built: Built) -> None:
    recipe = built.ws / "recipes" / "nopkg.yaml"
    recipe.write_text("name: nopkg\npackages:\n  - python3\n  - no-such-package-xyz\n")
    before = snapshot(built.ws / "images")
    r = sandbox(built.ws, "lock", "nopkg")
    assert r.code == 1
    assert "package no-such-package-xyz not found in bookworm" in r.stderr
    assert "recipes/nopkg.yaml:4" in r.stderr and "packages[1]" in r.stderr
    assert not (built.ws / "recipes" / "nopkg.lock").exists()
    assert snapshot(built.ws / "images") == before


def test_failing_run_command_names_the_key_and_leaves_no_trace(built: Built) -> None:
    recipe = built.ws / "recipes" / "failrun.yaml"
    recipe.write_text(
        (built.ws / "recipes" / "web.yaml")
        .read_text()
        .replace("name: web", "name: failrun")
        .replace("run:\n", "run:\n  - echo about to fail; exit 3\n")
    )
    (built.ws / "recipes" / "failrun.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    before = snapshot(built.ws / "images" / "manifests")
    r = sandbox(built.ws, "build", "failrun")
    assert r.code == 1
    assert "recipes/failrun.yaml" in r.stderr and "run[0]" in r.stderr and "exit 3" in r.stderr
    assert "about to fail" in r.stderr
    assert snapshot(built.ws / "images" / "manifests") == before
    assert mounts_below(built.ws) == []
    assert list((built.ws / ".sandbox" / "tmp").iterdir()) == []


def test_symlinks_in_the_image_never_lead_to_the_host(built: Built, tmp_path: Path) -> None:
    import tempfile

    # not below /tmp (wherever the checkout is): the image's /tmp is emptied by normalization
    host_target = Path(tempfile.mkdtemp(prefix="sandbox-esc-target-", dir="/var/lib"))
    app = built.ws / "recipes" / "esc" / "tree"
    app.mkdir(parents=True)
    (app / "hop").symlink_to(str(host_target))  # absolute: must resolve inside the image
    (built.ws / "recipes" / "esc" / "x.txt").write_text("x\n")
    base = (built.ws / "recipes" / "web.yaml").read_text().replace("name: web", "name: esc")
    recipe = built.ws / "recipes" / "esc.yaml"
    recipe.write_text(
        base.replace(
            "files:\n",
            "files:\n  - {src: esc/tree/, dest: /opt/esc/}\n  - {src: esc/x.txt, dest: /opt/esc/hop/x.txt}\n",
        )
    )
    (built.ws / "recipes" / "esc.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    r = sandbox(built.ws, "build", "esc", "--json")
    assert r.code == 0, r.stderr
    assert list(host_target.iterdir()) == []  # nothing written on the host
    m = sandbox(built.ws, "image", "inspect", "esc", "--files", "--json").json
    assert str(host_target) + "/x.txt" in m["files"]  # the file landed inside the image
    # a relative link that climbs above the root stops at the image's root, as in a chroot
    (app / "hop").unlink()
    (app / "hop").symlink_to("../../../../../../../../../../.." + str(host_target))
    r = sandbox(built.ws, "build", "esc", "--json")
    assert r.code == 0, r.stderr
    assert list(host_target.iterdir()) == []
    m = sandbox(built.ws, "image", "inspect", "esc", "--files", "--json").json
    assert str(host_target) + "/x.txt" in m["files"]
    assert mounts_below(built.ws) == []
    host_target.rmdir()


def test_kill_9_leaves_no_partial_image_and_the_next_build_succeeds(built: Built, tmp_path: Path) -> None:
    import os
    import signal
    import sys
    import time

    from tests.integration.conftest import shared_cache

    ws = new_workspace(tmp_path, "killed")
    (ws / "recipes" / "web.lock").write_bytes((built.ws / "recipes" / "web.lock").read_bytes())
    env = {**os.environ, "SANDBOX_CACHE": str(shared_cache())}
    blobs = ws / "images" / "blobs" / "sha256"
    for moment in ("mmdebstrap", "blob"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "-C", str(ws), "build", "web"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if moment == "mmdebstrap" and any((ws / ".sandbox" / "tmp").glob("build-*/rootfs/usr/bin")):
                break
            if moment == "blob" and blobs.is_dir() and any(blobs.glob(".tmp-*")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the build ended before the {moment} phase could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1)  # mmdebstrap got SIGTERM via PDEATHSIG; let it clean up
        manifests = ws / "images" / "manifests"
        assert not manifests.exists() or list(manifests.iterdir()) == []
    r = sandbox(ws, "build", "web", "--json")
    assert r.code == 0, r.stdout + r.stderr
    assert r.json["digest"] == built.digest
    assert mounts_below(ws) == []
    assert not list(ws.rglob(".tmp-*"))
    assert list((ws / ".sandbox" / "tmp").iterdir()) == []

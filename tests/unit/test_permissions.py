"""What sandbox writes on the host is closed to other host users: the image store, the state
database, the fingerprints and caches, instance.env, lxc's rootfs and instance dirs. Each mode is
asserted, and a read as another uid (nobody) is shown to fail."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from sandbox.backends.base import BackendContext, ImageAccess, InstanceSpec
from sandbox.backends.instancefiles import INSTANCE_ENV_FILE, write_instance_files
from sandbox.backends.lxc import LxcBackend
from sandbox.build import fingerprint
from sandbox.config.profile_cache import remember
from sandbox.settings import Network
from sandbox.state.db import StateDB
from sandbox.store import ImageStore
from sandbox.workspace import Workspace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="reading as another uid needs root")
NOBODY = 65534


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def readable_by(uid: int, path: Path, gid: int | None = None) -> bool:
    """Can `uid` (with only group `gid`) read `path`? Asked in a child that drops to that uid."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(gid if gid is not None else uid)
            os.setuid(uid)
            if path.is_dir():
                os.listdir(path)
            else:
                with open(path, "rb") as f:
                    f.read(1)
            os._exit(0)
        except OSError:
            os._exit(1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code in (0, 1), code
    return code == 0


@pytest.fixture
def open_tmp(tmp_path: Path) -> Path:
    """tmp_path opened to everyone on the way (pytest's tmp dirs are 0700), so only the modes under
    test decide what another uid can read."""
    for d in (tmp_path, *tmp_path.parents):
        if d == Path("/"):
            break
        if not os.stat(d).st_mode & stat.S_IXOTH:
            os.chmod(d, os.stat(d).st_mode | 0o711)
    return tmp_path


def test_the_image_store_is_closed_to_other_users(open_tmp: Path) -> None:
    store = ImageStore(open_tmp / "images")
    digest, _, _ = store.put_blob(lambda f: f.write(b"a layer with a 0640 file"))
    store.put_layer_index(digest, {"/etc/app.env": {"mode": "0640"}})
    image = store.put_manifest({"layers": [{"digest": digest}], "recipe": {"name": "web"}})
    store.set_ref("web", "latest", image)
    store.cache_put("app", "k" * 8, image)
    blob = store.blob_path(digest)
    assert mode(store.root) == 0o700
    assert mode(blob) == 0o600
    for p in (store.manifest_path(image), store.layer_index_path(digest), store.root / "refs/web/latest"):
        assert mode(p) == 0o600, p
    assert not readable_by(NOBODY, blob)
    assert not readable_by(NOBODY, store.root)
    # the digest is of the bytes: the mode does not change it
    assert digest == "sha256:" + __import__("hashlib").sha256(blob.read_bytes()).hexdigest()


def test_state_db_fingerprints_and_caches_are_root_s_only(open_tmp: Path) -> None:
    ws = Workspace(open_tmp / "ws")
    ws.recipes.mkdir(parents=True)
    db = StateDB(ws.state / "state.db")
    db._connection(wal=True).execute("CREATE TABLE IF NOT EXISTS t (x)")
    fingerprint.record(ws, "web", [], "sha256:" + "a" * 64, (1, 1))

    class P:
        name, data, digest, sources = "prod", {"env": {"SECRET": "s3cret"}}, "d", []

    remember(ws.state, ws.profiles, P())  # type: ignore[arg-type]
    fp = ws.state / "fingerprints"
    assert mode(ws.state / "state.db") == 0o600
    for extra in ("state.db-wal", "state.db-shm"):
        if (ws.state / extra).exists():
            assert mode(ws.state / extra) == 0o600
    assert mode(fp) == 0o700
    assert mode(fp / "web.json") == 0o600 and mode(fp / "profile-prod.json") == 0o600
    assert not readable_by(NOBODY, ws.state / "state.db")
    assert not readable_by(NOBODY, fp / "profile-prod.json")


def test_an_existing_world_readable_state_db_is_closed_on_open(open_tmp: Path) -> None:
    path = open_tmp / "state.db"
    path.write_bytes(b"")
    os.chmod(path, 0o644)
    StateDB(path)
    assert mode(path) == 0o600


def test_instance_env_is_for_the_instance_s_root_only(open_tmp: Path) -> None:
    upper = open_tmp / "delta0"
    upper.mkdir()
    spec = InstanceSpec(
        name="web-1-0", env="web-1", image="sha256:" + "a" * 64, env_vars={"API_TOKEN": "s3cret"}, index=0
    )
    write_instance_files(upper, spec, 100000, 100000)
    env = upper / INSTANCE_ENV_FILE
    assert mode(env) == 0o600
    assert (os.stat(env).st_uid, os.stat(env).st_gid) == (100000, 100000)
    assert "s3cret" in env.read_text()
    assert not readable_by(NOBODY, env)
    assert not readable_by(100001, env, 100001)  # another user of the container


def test_lxc_dirs_let_container_root_through_but_no_other_host_user(open_tmp: Path) -> None:
    ctx = BackendContext(
        workspace_id="ws1",
        runtime=open_tmp / "run",
        tmp=open_tmp / "tmp",
        network=Network(),
        images=ImageAccess(ImageStore(open_tmp / "images")),
    )
    lxc = LxcBackend(ctx)
    files = (open_tmp / "subuid", open_tmp / "subgid")
    for f in files:
        f.write_text("root:100000:65536\n")
    lxc.subid_files = files
    lxc._private_dirs()
    inner = lxc.rootfs_dir / "img" / "rootfs"
    inner.mkdir(parents=True)
    os.chmod(inner.parent, 0o755)
    (inner / "setuid-tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(inner / "setuid-tool", 0o4755)
    for d in (lxc.lxcpath, lxc.rootfs_dir):
        st = os.stat(d)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o710, 0, 100000), d
    # container root (uid and gid 100000) traverses; nobody does not reach the setuid file
    probe = inner / "setuid-tool"
    assert readable_by(100000, probe, 100000)
    assert not readable_by(NOBODY, probe)


def test_nobody_cannot_run_what_lies_below_the_rootfs_dir(open_tmp: Path) -> None:
    """The same as a process: setpriv as nobody, `cat` a file below the closed dir."""
    d = open_tmp / "closed"
    d.mkdir()
    os.chmod(d, 0o710)
    os.chown(d, 0, 100000)
    (d / "f").write_text("x")
    p = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "cat", str(d / "f")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert p.returncode != 0 and "Permission denied" in p.stderr
    assert json.dumps(p.stdout) == '""'

"""`sandbox image export`, each format proven by the real client that uses it.

tar: deterministic bytes and safe member names; docker: `docker load` then `docker run` serves the
app's health endpoint (at the container's address on docker's bridge, created by this test).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tarfile
import time
import urllib.request
from pathlib import Path

import pytest

from sandbox.imageformats.docker import repo_tag
from sandbox.store import ImageStore
from tests.integration.conftest import Built, docker_problem, require, sandbox

pytestmark = pytest.mark.integration
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def test_tar_export_is_deterministic_and_safe(built: Built, tmp_path: Path) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b"
    b.mkdir()
    r = sandbox(built.ws, "image", "export", built.digest, "-o", str(a), "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["format"] == "tar" and doc["path"] == str(a) and doc["size"] == a.stat().st_size
    r = sandbox(built.ws, "image", "export", "web", "--format", "tar", "-o", str(b), "--json")
    assert r.code == 0, r.stderr
    second = Path(json.loads(r.stdout)["path"])
    assert second.parent == b and second.read_bytes() == a.read_bytes()
    with tarfile.open(a) as tar:
        members = {m.name: m for m in tar}
    assert all(not n.startswith("/") and ".." not in n.split("/") for n in members)
    app = members["./srv/app/app.py"]
    assert (app.uid, app.gid) == (1001, 1001)
    assert not any(n.startswith("./.wh.") or "/.wh." in n for n in members)
    assert list(tmp_path.glob(".*.tmp")) == [] and list(b.glob(".*.tmp")) == []


def test_export_refuses_bad_input_and_writes_nothing(built: Built, tmp_path: Path) -> None:
    for args, message in [
        (("--format", "zip"), "Invalid value for '--format'"),
        (("-o", str(tmp_path / "missing" / "x.tar")), "is not a directory"),
    ]:
        r = sandbox(built.ws, "image", "export", built.digest, *args)
        assert r.code != 0 and message in r.stderr, r.stderr
    r = sandbox(built.ws, "image", "export", "sha256:0000000000", "-o", str(tmp_path))
    assert r.code == 1 and "hint:" in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_docker_export_loads_and_runs_with_the_docker_client(built: Built, tmp_path: Path) -> None:
    require(docker_problem())
    out = tmp_path / "web.docker.tar"
    r = sandbox(built.ws, "image", "export", built.digest, "--format", "docker", "-o", str(out))
    assert r.code == 0, r.stderr
    tag = repo_tag(ImageStore(built.ws / "images"), built.digest)
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
    loaded = subprocess.run(["docker", "load", "-i", str(out)], capture_output=True, text=True, check=True)
    assert f"Loaded image: {tag}" in loaded.stdout, loaded.stdout
    labels = json.loads(
        subprocess.run(
            ["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", tag],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert labels["io.sandbox.digest"] == built.digest and labels["io.sandbox.recipe"] == "web"
    name = f"sbx-export-{int(time.time())}"
    subprocess.run(["docker", "run", "-d", "--name", name, tag], capture_output=True, check=True)
    try:
        addr = subprocess.run(
            ["docker", "inspect", "-f", "{{.NetworkSettings.IPAddress}}", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert addr, "the container has no address on docker's bridge"
        doc = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and doc is None:
            with (
                contextlib.suppress(OSError),
                NO_PROXY.open(f"http://{addr}:8000/healthz", timeout=3) as resp,
            ):
                doc = json.loads(resp.read())
            time.sleep(0.3)
        assert doc is not None and doc["status"] == "ok", doc
        user = subprocess.run(
            ["docker", "exec", name, "id", "-un"], capture_output=True, text=True, check=True
        )
        assert user.stdout.strip() == "app"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)

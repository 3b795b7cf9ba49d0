"""The host agent's docker ops against a fake engine on a unix socket (the real engine on hosts is in
tests/integration/test_hosts.py): `docker-load` streams the `docker load` archive written from the
host's own store, chunked, and checks the image afterwards; an engine that refuses, or is not there,
is a clear error; an image not shipped yet is refused before the engine is asked."""

from __future__ import annotations

import contextlib
import io
import json
import socketserver
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from sandbox.hostagent import dockerops
from sandbox.hostagent.main import AgentUsage
from sandbox.imageformats.docker import LABEL_DIGEST, repo_tag
from sandbox.store import ImageStore
from tests.unit.imagefactory import Image, make_image


class Engine:
    """What the fake engine saw and holds."""

    def __init__(self) -> None:
        self.images: dict[str, str] = {}  # tag -> digest label
        self.loads: list[list[str]] = []  # the member names of each archive loaded
        self.refuse: str | None = None


def _handler(engine: Engine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def address_string(self) -> str:  # a unix socket has no (host, port)
            return "unix"

        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/version":
                self._send(200, b'{"Version": "20.10.fake"}')
            elif self.path.startswith("/images/") and self.path.endswith("/json"):
                tag = self.path[len("/images/") : -len("/json")]
                if tag in engine.images:
                    self._send(
                        200, json.dumps({"Config": {"Labels": {LABEL_DIGEST: engine.images[tag]}}}).encode()
                    )
                else:
                    self._send(404, b'{"message": "no such image"}')
            else:
                self._send(404, b"{}")

        def do_POST(self) -> None:
            assert self.path == "/images/load?quiet=1"
            assert self.headers["Transfer-Encoding"] == "chunked"
            body = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
            if engine.refuse:
                self._send(200, json.dumps({"errorDetail": {}, "error": engine.refuse}).encode() + b"\n")
                return
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:
                engine.loads.append(tar.getnames())
                index = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
                config = json.load(tar.extractfile(index[0]["Config"]))  # type: ignore[arg-type]
            for tag in index[0]["RepoTags"]:
                engine.images[tag] = config["config"]["Labels"][LABEL_DIGEST]
            self._send(200, b'{"stream": "Loaded image"}\n')

    return Handler


@contextlib.contextmanager
def unix_server(sock: Path, handler: type[BaseHTTPRequestHandler]) -> Iterator[None]:
    """An HTTP server of `handler` on the unix socket `sock`, in a thread, while the block runs."""
    server = socketserver.ThreadingUnixStreamServer(str(sock), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    e = Engine()
    monkeypatch.setattr(dockerops, "DOCKER_SOCK", str(tmp_path / "docker.sock"))
    with unix_server(tmp_path / "docker.sock", _handler(e)):
        yield e


@pytest.fixture
def host_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[ImageStore, Image]:
    """An image in the host store (as shipping leaves it)."""
    monkeypatch.setenv("SANDBOX_HOST_ROOT", str(tmp_path / "host"))
    store = ImageStore(tmp_path / "host" / "store")
    return store, make_image(store, tmp_path / "work")


def test_an_image_from_the_host_store_is_loaded_once(
    engine: Engine, host_image: tuple[ImageStore, Image]
) -> None:
    store, img = host_image
    assert dockerops.docker_ping([]) == {"version": "20.10.fake"}
    out = dockerops.docker_load([img.digest])
    tag = repo_tag(store, img.digest)
    assert out == {"tag": tag, "loaded": True}
    assert engine.images == {tag: img.digest}
    [names] = engine.loads
    layers = [la["digest"][7:] for la in store.manifest(img.digest)["layers"]]
    assert [f"{d}/layer.tar" for d in layers] == [n for n in names if n.endswith("/layer.tar")]
    # loaded already (the digest label matches): nothing is sent again
    assert dockerops.docker_load([img.digest]) == {"tag": tag, "loaded": False}
    assert len(engine.loads) == 1


def test_a_refused_load_and_a_missing_engine_are_clear(
    engine: Engine, host_image: tuple[ImageStore, Image], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _, img = host_image
    engine.refuse = "write /var/lib/docker/tmp: no space left on device"
    with pytest.raises(dockerops.DockerEngineError) as e:
        dockerops.docker_load([img.digest])
    assert "no space left" in e.value.message and img.digest[7:19] in e.value.message
    monkeypatch.setattr(dockerops, "DOCKER_SOCK", str(tmp_path / "nothing.sock"))
    with pytest.raises(dockerops.DockerEngineError) as e:
        dockerops.docker_load([img.digest])
    assert "does not answer" in e.value.message and e.value.hint and "dockerd" in e.value.hint


def test_an_image_not_shipped_or_a_bad_digest_is_refused_before_the_engine(
    engine: Engine, host_image: tuple[ImageStore, Image]
) -> None:
    with pytest.raises(dockerops.DockerEngineError, match="not in this host's store"):
        dockerops.docker_load(["sha256:" + "ab" * 32])
    for bad in (["../../etc"], ["sha256:" + "A" * 64], [], ["sha256:" + "a" * 64, "x"]):
        with pytest.raises(AgentUsage):
            dockerops.docker_load(bad)
    assert engine.loads == []

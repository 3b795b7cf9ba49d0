"""The docker engine on a host: `docker-load DIGEST` and `docker-ping`.

`docker-load` puts an image that is already in this host's store (shipped there blob by blob and
verified by sha256, sandbox/hosts/ship.py) into the host's docker engine: the same `docker load`
archive the control machine's docker backend loads (sandbox/imageformats/docker.py), written here
from the local blobs and streamed into the engine's socket. So only the blobs a host lacks cross the
network, never a whole image. The engine is spoken to with the standard library (HTTP over its unix
socket): a host needs neither the docker CLI nor the SDK. Everything else (containers, exec, logs)
the control machine does itself with the docker SDK over a forwarded socket (sandbox/hosts/ssh.py).
"""

from __future__ import annotations

import json
import os
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

from sandbox.errors import SandboxError
from sandbox.hostagent.main import AgentUsage, op
from sandbox.hostagent.storeops import shipped
from sandbox.hostagent.unixhttp import UnixHTTP, request
from sandbox.imageformats.docker import LABEL_DIGEST, repo_tag, write_docker_archive

DOCKER_SOCK = "/var/run/docker.sock"


class DockerEngineError(SandboxError):
    """The host's docker engine is missing, does not answer, or refused the image."""


DOWN_HINT = "start dockerd on the host (`sandbox host prepare PROFILE` installs docker.io)"


def _conn(timeout: float) -> UnixHTTP:
    return UnixHTTP("the docker engine", DOCKER_SOCK, timeout, DockerEngineError, DOWN_HINT)


def _get(path: str, timeout: float = 10) -> tuple[int, bytes]:
    return request(_conn(timeout), "GET", path)


def engine_version() -> str:
    """The engine's version (raises DockerEngineError when it does not answer)."""
    status, body = _get("/version")
    if status != 200:
        raise DockerEngineError(f"the docker engine answered {status} to /version")
    return str(json.loads(body).get("Version", "?"))


def _loaded(tag: str, digest: str) -> bool:
    status, body = _get(f"/images/{urllib.parse.quote(tag, safe='/:')}/json")
    if status != 200:
        return False
    labels = (json.loads(body).get("Config") or {}).get("Labels") or {}
    return bool(labels.get(LABEL_DIGEST) == digest)


@op("docker-ping")
def docker_ping(args: list[str]) -> dict[str, Any]:
    if args:
        raise AgentUsage("docker-ping takes no arguments")
    return {"version": engine_version()}


@op("docker-load")
def docker_load(args: list[str]) -> dict[str, Any]:
    images, digest = shipped("docker-load", args, DockerEngineError)
    tag = repo_tag(images, digest)
    if _loaded(tag, digest):
        return {"tag": tag, "loaded": False}
    failed: list[BaseException] = []

    def chunks() -> Iterator[bytes]:
        """The archive, written by a thread into a pipe (started when the engine reads the body)."""
        r, w = os.pipe()

        def write() -> None:
            with os.fdopen(w, "wb") as f:
                try:
                    write_docker_archive(images, digest, f)
                except BrokenPipeError:  # the engine stopped reading: its own answer says why
                    pass
                except Exception as e:  # reported once the engine has answered
                    failed.append(e)

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        with os.fdopen(r, "rb") as f:
            while block := f.read(1 << 20):
                yield block
        writer.join()

    status, body = request(
        _conn(1800),
        "POST",
        "/images/load?quiet=1",
        body=chunks(),
        headers={"Content-Type": "application/x-tar"},
        chunked=True,
    )
    if failed:
        raise DockerEngineError(f"writing the image archive failed: {failed[0]}")
    errors = [_error(line) for line in body.splitlines() if line.strip()]
    errors = [e for e in errors if e]
    if status != 200 or errors:
        detail = errors[0] if errors else body.decode(errors="replace")[:300]
        raise DockerEngineError(
            f"docker load refused image {digest[7:19]}: {detail}", hint="see dockerd's log"
        )
    if not _loaded(tag, digest):
        raise DockerEngineError(f"docker load of {digest[7:19]} left no image {tag}")
    return {"tag": tag, "loaded": True}


def _error(line: bytes) -> str | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    if isinstance(obj, dict) and obj.get("error"):
        return str(obj.get("error"))
    return None

"""HTTP over a local daemon's unix socket with the standard library (the host agent needs neither the
docker SDK nor pylxd): one request, its status and its body, read to a bound."""

from __future__ import annotations

import http.client
import socket
from collections.abc import Iterable
from typing import IO

from sandbox.errors import SandboxError

#: the most of an answer that is read (an image list, an LXD operation: kilobytes)
MAX_ANSWER = 16 << 20


class UnixHTTP(http.client.HTTPConnection):
    """HTTP to `what` (e.g. "the docker engine") over its unix socket `path`; failures are `error`
    (a SandboxError class), with `hint` when nothing answers there."""

    def __init__(self, what: str, path: str, timeout: float, error: type[SandboxError], hint: str) -> None:
        super().__init__("localhost", timeout=timeout, blocksize=1 << 20)
        self.what = what
        self.socket_path = path
        self.error = error
        self.hint = hint

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.socket_path)
        except OSError as e:
            s.close()
            why = f"{self.what} does not answer on {self.socket_path}: {e.strerror or e}"
            raise self.error(why, hint=self.hint) from e
        self.sock = s


def request(
    conn: UnixHTTP,
    method: str,
    path: str,
    body: bytes | IO[bytes] | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, bytes]:
    """Send one request on `conn` and close it: (status, body), at most MAX_ANSWER bytes of it."""
    try:
        conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        r = conn.getresponse()
        data = r.read(MAX_ANSWER + 1)
    except OSError as e:
        raise conn.error(f"{conn.what}: {method} {path[:200]} failed: {e}", hint=conn.hint) from e
    finally:
        conn.close()
    if len(data) > MAX_ANSWER:
        raise conn.error(f"{conn.what}: the answer to {method} {path[:200]} is over {MAX_ANSWER} bytes")
    return r.status, data

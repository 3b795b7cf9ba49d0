"""The wire format between the HTTP side and the root side: one JSON line each way per connection.

A request is `{"method": M, "cred": {"session": S} | {"token": T} | {}, "source": ADDR, "args": {...}}`;
an answer `{"ok": true, "result": ...}` or `{"ok": false, "status": HTTP-STATUS, "error": {...}}`.
A line is at most MAX_LINE bytes (a webhook body rides base64 in it); a longer one is refused before
it is parsed. JSON with duplicate keys is refused too: the two sides must never read one request
differently.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from sandbox.errors import SandboxError

MAX_LINE = 4 * 1024 * 1024
TIMEOUT = 600.0


class RPCError(SandboxError):
    """An answer of the root side that is not ok, with the HTTP status it maps to."""

    def __init__(self, status: int, message: str, hint: str | None = None, kind: str = "RPCError") -> None:
        super().__init__(message, hint)
        self.status = status
        self.kind = kind

    def to_dict(self) -> dict[str, object]:
        return {"error": self.kind, "message": self.message, "hint": self.hint}


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:40]!r}")
        out[k] = v
    return out


def loads(data: bytes) -> Any:
    """Strict JSON: UTF-8, no duplicate keys, no NaN; ValueError otherwise."""

    def bad_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=bad_constant)


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str, allow_nan=False).encode() + b"\n"


def read_line(sock: socket.socket, limit: int = MAX_LINE) -> bytes:
    """One line (without its newline) of at most `limit` bytes; ValueError if longer or cut short."""
    buf = bytearray()
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ValueError("the connection closed before the end of the line")
        nl = chunk.find(b"\n")
        if nl >= 0:
            buf += chunk[:nl]
            if len(buf) > limit:
                break
            return bytes(buf)
        buf += chunk
        if len(buf) > limit:
            break
    raise ValueError(f"a line over {limit} bytes")


def call(path: str, method: str, cred: dict[str, str], args: dict[str, Any], source: str = "") -> Any:
    """One request to the root side's socket at `path`: its result, or RPCError."""
    request = dumps({"method": method, "cred": cred, "source": source, "args": args})
    if len(request) > MAX_LINE:
        raise RPCError(413, f"a request of {len(request)} bytes is too large")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(TIMEOUT)
        try:
            s.connect(path)
            s.sendall(request)
            answer = loads(read_line(s))
        except (OSError, ValueError) as e:
            raise RPCError(
                503, f"the root side did not answer: {e}", hint="is `sandbox serve` running?"
            ) from e
    if not isinstance(answer, dict):
        raise RPCError(502, "a malformed answer from the root side")
    if answer.get("ok") is True:
        return answer.get("result")
    raw = answer.get("error")
    err: dict[str, Any] = raw if isinstance(raw, dict) else {}
    status = answer.get("status")
    raise RPCError(
        status if isinstance(status, int) and 400 <= status <= 599 else 500,
        str(err.get("message", "refused")),
        err.get("hint") if isinstance(err.get("hint"), str) else None,
        str(err.get("error", "RPCError")),
    )

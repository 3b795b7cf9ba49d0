"""exec and file writes in a VM through qemu-guest-agent (guest-exec, guest-exec-status).

The agent runs commands as root with exactly the environment given; a command
for another user goes through `runuser` with that user's HOME, USER and LOGNAME.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from collections.abc import Callable, Mapping
from typing import Any

from sandbox.backends.base import BackendError, ExecResult

EXEC_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: as `user`, with that user's home: argv follows the user name
AS_USER = (
    'h=$(getent passwd "$0" | cut -d: -f6); [ -n "$h" ] || { echo "no user $0" >&2; exit 126; }; '
    'export HOME="$h" USER="$0" LOGNAME="$0"; cd "$h" 2>/dev/null || cd /; exec runuser -u "$0" -- "$@"'
)
PUT_FILE = (
    'mkdir -p "$(dirname "$1")" && cat > "$1.sbxnew" && chown "$2" "$1.sbxnew" '
    '&& chmod "$3" "$1.sbxnew" && mv -f "$1.sbxnew" "$1"'
)

#: sends one agent command (JSON text) with a timeout in seconds, returns the reply's JSON text
Send = Callable[[str, int], str]


def exec_request(
    argv: list[str], user: str | None, env: Mapping[str, str] | None, stdin: bytes | None = None
) -> dict[str, Any]:
    """The guest-exec command for argv (pure; unit-tested)."""
    environ = {"PATH": EXEC_PATH, "LANG": "C.UTF-8", "HOME": "/root", "USER": "root", "LOGNAME": "root"}
    environ.update(env or {})
    if user and user != "root":
        argv = ["/bin/sh", "-c", AS_USER, user, *argv]
    args: dict[str, Any] = {
        "path": argv[0],
        "arg": argv[1:],
        "env": [f"{k}={v}" for k, v in environ.items()],
        "capture-output": True,
    }
    if stdin is not None:
        args["input-data"] = base64.b64encode(stdin).decode()
    return {"execute": "guest-exec", "arguments": args}


def _reply(text: str) -> Any:
    doc = json.loads(text)
    if "error" in doc:
        raise BackendError(f"guest agent: {doc['error'].get('desc', doc['error'])}")
    return doc.get("return")


def _decode(status: Mapping[str, Any], key: str) -> str:
    data = status.get(key)
    return base64.b64decode(data).decode(errors="replace") if data else ""


def guest_exec(
    send: Send,
    argv: list[str],
    *,
    user: str | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes | None = None,
    timeout: float | None = None,
    what: str = "",
) -> ExecResult:
    pid = _reply(send(json.dumps(exec_request(argv, user, env, stdin)), 30))["pid"]
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.02
    while True:
        status = _reply(send(json.dumps({"execute": "guest-exec-status", "arguments": {"pid": pid}}), 30))
        if status.get("exited"):
            code = status.get("exitcode")
            if code is None:  # killed by a signal
                code = 128 + int(status.get("signal", 0))
            return ExecResult(int(code), _decode(status, "out-data"), _decode(status, "err-data"))
        if deadline is not None and time.monotonic() > deadline:
            raise BackendError(f"command timed out after {timeout}s in {what}: {shlex.join(argv)}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)


def put_file(send: Send, path: str, data: bytes, mode: int, uid: int, gid: int, what: str = "") -> None:
    r = guest_exec(
        send, ["/bin/sh", "-c", PUT_FILE, "sh", path, f"{uid}:{gid}", f"{mode:o}"], stdin=data, timeout=60
    )
    if r.code != 0:
        raise BackendError(f"cannot write {path} in {what}: {r.stderr.strip()}")


def ping(send: Send) -> bool:
    try:
        _reply(send(json.dumps({"execute": "guest-ping"}), 5))
    except BackendError:
        return False
    return True

"""`session`: many requests over one ssh channel and one Python process, for one command.

A command of sandbox (a promotion, `up`, `down`) asks a host for dozens of things. As separate
commands each costs an ssh session, a login shell and a Python start on the host (0.1-0.5 s, far more
on a busy host); in one session each costs a line there and back. The session lives exactly as long
as its ssh channel: the control side closes it when its command ends (or dies, and the kernel closes
the pipe), the agent reads end-of-file and exits. Nothing of sandbox stays running on the host.

Protocol, one JSON document per line both ways: a request `{"op": OP, "args": [STR...], "request":
ANY}`, the answer the same document a one-shot call prints (`{"ok": ...}` or `{"error": CLASS,
"message", "hint"}`) with `"exit"`; an unexpected exception answers `{"crash": TRACEBACK_TAIL}` and
ends the session (its state is not trusted after that). Only the ops that take a JSON request and
give a JSON answer run here: an image stream (`recv-image`) and the terminal ops have their own
command.

While it serves, fd 1 is the process's stderr: what an op or a tool it starts prints can never be
taken for an answer; the answers go to the original stdout, and a tool never reads the requests
(its stdin is /dev/null).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any

from sandbox.hostagent.main import SESSION_REQUEST, AgentUsage, op, run_op
from sandbox.hostagent.ops import ping
from sandbox.hosts.session import SESSION_OPS

#: the longest request line (a put_file carries a file, base64)
MAX_LINE = 256 << 20


def _answer(out: Any, doc: dict[str, Any]) -> None:
    out.write(json.dumps(doc).encode() + b"\n")
    out.flush()


def serve_one(line: bytes) -> dict[str, Any]:
    """The answer to one request line (a crash is raised)."""
    try:
        req = json.loads(line)
    except ValueError:
        req = None
    if not isinstance(req, dict):
        return {"exit": 3, **AgentUsage("malformed session request").to_dict()}
    name, args = req.get("op"), req.get("args") or []
    if not isinstance(name, str) or name not in SESSION_OPS:
        return {"exit": 3, **AgentUsage(f"op {name!r} does not run in a session").to_dict()}
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return {"exit": 3, **AgentUsage(f"malformed arguments to {name}").to_dict()}
    SESSION_REQUEST.append(req.get("request"))
    try:
        code, doc = run_op([name, *args])
    finally:
        SESSION_REQUEST.pop()
    return {"exit": code, **doc}


@op("session")
def session(argv: list[str]) -> Any:
    inp = os.fdopen(os.dup(0), "rb")
    out = os.fdopen(os.dup(1), "wb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(2, 1)  # whatever else writes to stdout goes to stderr
    sys.stdout = sys.stderr
    _answer(out, {"exit": 0, "ok": ping([])})  # the greeting
    while True:
        line = inp.readline(MAX_LINE + 1)
        if not line:
            break
        if len(line) > MAX_LINE:
            _answer(out, {"exit": 3, **AgentUsage("session request too long").to_dict()})
            break
        try:
            doc = serve_one(line)
        except BaseException:
            _answer(out, {"exit": 1, "crash": traceback.format_exc()[-4000:]})
            os._exit(1)
        _answer(out, doc)
    os._exit(0)

"""Calling the host agent through a Transport: one op, one JSON answer, errors raised again here.

The agent answers `{"ok": ...}` (exit 0) or `{"error": CLASS, "message", "hint"}` (exit 3); an
error comes back as AgentError with the host's name in front and the agent's class in `kind`, so a
caller can tell "this blob arrived corrupt" (send it again) from "this host cannot" (give up).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Sequence
from typing import IO, Any

from sandbox.hosts.transport import HostError, HostUnreachable, Talk, Transport

#: how the agent is started on a host: a fixed prefix, or one per host
AgentPrefix = Callable[[Transport], Sequence[str]] | Sequence[str]


class AgentError(HostError):
    """The host agent refused a request or crashed (the message names the host)."""

    def __init__(
        self, message: str, hint: str | None = None, kind: str = "", host: str | None = None
    ) -> None:
        super().__init__(message, hint, host)
        self.kind = kind  # the agent's error class ("BlobCorrupt", "AgentUsage", ...), "" for a crash


def agent_argv(agent: AgentPrefix, t: Transport) -> list[str]:
    return list(agent(t)) if callable(agent) else list(agent)


def agent_call(
    t: Transport,
    agent: AgentPrefix,
    op: str,
    args: Sequence[str] = (),
    *,
    input: bytes | None = None,
    stdin: IO[bytes] | None = None,
    timeout: float | None = 60,
) -> Any:
    """Run `op` on host `t`; its `ok` value, or AgentError / HostError naming the host."""
    try:
        cp = t.run([*agent_argv(agent, t), op, *args], input=input, stdin=stdin, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise _no_answer(t, op, timeout) from e
    return answer(t.name, op, cp)


def agent_talk(
    t: Transport, agent: AgentPrefix, op: str, args: Sequence[str], talk: Talk, timeout: float | None
) -> Any:
    """Run `op` on host `t` while `talk` writes its stdin and reads what it answers on the way
    (Transport.talk); its final `ok` value, or AgentError / HostError naming the host."""
    try:
        cp = t.talk([*agent_argv(agent, t), op, *args], talk, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise _no_answer(t, op, timeout) from e
    return answer(t.name, op, cp)


def _no_answer(t: Transport, op: str, timeout: float | None) -> HostUnreachable:
    return HostUnreachable(
        f"{t.name}: agent {op} got no answer in {timeout or 0:.0f}s",
        hint="is the host up and not overloaded?",
        host=t.name,
    )


def answer(host: str, op: str, cp: subprocess.CompletedProcess[bytes]) -> Any:
    """The `ok` value of an agent's answer, or the AgentError it stands for."""
    lines = cp.stdout.decode(errors="replace").strip().splitlines()
    try:
        doc = json.loads(lines[-1]) if lines else None
    except ValueError:
        doc = None
    return answer_doc(host, op, cp.returncode, doc, cp.stderr)


def answer_doc(host: str, op: str, code: int, doc: Any, stderr: bytes = b"") -> Any:
    """The `ok` value of the agent's answer `doc` (exit `code`), or the AgentError it stands for; a
    crash says the last lines of the agent's stderr (or the traceback a session sent)."""
    if code == 0 and isinstance(doc, dict) and "ok" in doc:
        return doc["ok"]
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        hint = doc.get("hint")
        raise AgentError(
            f"host {host}: {str(doc.get('message'))[:2000]}",
            hint=hint if isinstance(hint, str) else None,
            kind=doc["error"],
            host=host,
        )
    crash = doc.get("crash") if isinstance(doc, dict) else None
    text = crash if isinstance(crash, str) else stderr.decode(errors="replace")
    tail = text.strip().splitlines()[-5:]
    raise AgentError(
        f"host {host}: agent {op} failed (exit {code}): {' / '.join(tail)[:2000] or 'no output'}",
        hint="is the agent installed on the host and of this version? (sandbox host check)",
        host=host,
    )

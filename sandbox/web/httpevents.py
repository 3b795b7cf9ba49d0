"""`GET /events`: Server-Sent Events of the feed (job states, deploy steps, env events), for a
signed-in browser session or a bearer token.

Each event's `id:` is the feed's id, so a browser's EventSource that reconnects sends
`Last-Event-ID` and the stream resumes after it (`?after=ID` does the same for a first connect).
The root side answers `events` long polls (at most WAIT seconds each), authenticating the session
on every call (a logout ends the stream within WAIT seconds) and sending only the events of envs the
user may view. Between batches with nothing new the stream carries a `: ping` comment (the
heartbeat). An unknown id (pruned) gets one `reset` event, meaning: reload the page.

Bounds: at most MAX_STREAMS streams at once in this process (503 beyond), each a pull loop: the next
long poll starts only when the last batch was written out, so a slow client holds back its own
stream and queues nothing here. A stream ends after MAX_AGE seconds; the browser reconnects with
its Last-Event-ID.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from sandbox.web.httpapp import api_error, bearer_cred, rpc, rpc_error, session_cred, whole
from sandbox.web.rpcproto import RPCError

WAIT = 15.0
MAX_STREAMS = 32
MAX_AGE = 3600.0
RETRY_MS = 2000


class _Streams:
    open = 0


def _event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    return whole(raw)


def _frame(ev: dict[str, Any]) -> bytes:
    data = json.dumps({"env": ev["env"], "ts": ev["ts"], **ev["data"]}, separators=(",", ":"))
    return f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {data}\n\n".encode()


async def events(request: Request) -> Response:
    cred = bearer_cred(request) or session_cred(request)
    after = _event_id(request)
    try:  # the first call answers at once: a bad credential is a 401 here, not a dead stream
        first = await rpc(request, "events", cred, {"after": after, "wait": 0})
    except RPCError as e:
        return rpc_error(e)
    if _Streams.open >= MAX_STREAMS:
        return api_error(503, "too many live streams are open", "try again later")

    async def stream() -> AsyncIterator[bytes]:
        batch: dict[str, Any] = first
        started = time.monotonic()
        _Streams.open += 1  # here, so that the finally below always pairs with it
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while True:
                if batch["reset"]:
                    yield f"id: {batch['last']}\nevent: reset\ndata: {{}}\n\n".encode()
                for ev in batch["events"]:
                    yield _frame(ev)
                if not batch["events"]:
                    yield b": ping\n\n"
                if time.monotonic() - started > MAX_AGE or await request.is_disconnected():
                    return
                try:
                    batch = await rpc(request, "events", cred, {"after": batch["last"], "wait": WAIT})
                except RPCError as e:  # signed out, or the root side went away: end the stream
                    yield f"event: end\ndata: {json.dumps({'status': e.status})}\n\n".encode()
                    return
        finally:
            _Streams.open -= 1

    headers = {"X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


def routes() -> list[BaseRoute]:
    return [Route("/events", events, methods=["GET"])]

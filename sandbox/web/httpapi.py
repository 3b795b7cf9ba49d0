"""The JSON API under /api/v1 (bearer tokens only) and the webhook endpoint /hooks/NAME.

GET envs, envs/NAME, envs/NAME/logs, images, images/diff and jobs answer what `sandbox ls --json`,
`status --json` (without the live probe), `logs --json` (as one list), `images --json` and `image
diff A B --limit 2000 --json` print, and the job rows; POST jobs queues one job, DELETE jobs/ID
cancels a queued one, POST jobs/ID/dismiss settles an interrupted one. /api/v1/openapi.json
(openapi.py) describes them.
"""

from __future__ import annotations

import base64
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from sandbox.web.httpapp import (
    MAX_HOOK,
    MAX_JSON,
    BodyTooLarge,
    api_error,
    bearer_cred,
    read_body,
    rpc,
    rpc_error,
    whole,
)
from sandbox.web.openapi import MAX_LIMIT, OPENAPI
from sandbox.web.rpcproto import RPCError, loads

HOOK_HEADERS = 100


async def _call(
    request: Request,
    method: str,
    args: dict[str, Any],
    status: int = 200,
    pick: str | None = None,
    query: tuple[str, ...] = (),
) -> Response:
    cred = bearer_cred(request)
    if not cred:
        return api_error(401, "an API token is needed", "Authorization: Bearer sbx_...", "AuthError")
    keys = [k for k, _ in request.query_params.multi_items()]
    if len(keys) != len(set(keys)) or not set(keys) <= set(query):
        allowed = f"it takes {', '.join(query)}, each at most once" if query else "it takes none"
        return api_error(400, "unknown or repeated query parameter", allowed, "BadRequest")
    try:
        result = await rpc(request, method, cred, args)
    except RPCError as e:
        return rpc_error(e)
    return JSONResponse(result[pick] if pick is not None else result, status)


async def whoami(request: Request) -> Response:
    return await _call(request, "whoami", {})


async def envs(request: Request) -> Response:
    return await _call(request, "envs", {}, pick="envs")


async def env(request: Request) -> Response:
    return await _call(request, "env", {"name": request.path_params["name"]})


async def logs(request: Request) -> Response:
    args: dict[str, Any] = {"name": request.path_params["name"]}
    for key in ("instance", "lines"):
        if key in request.query_params:
            value = whole(request.query_params[key], 6)
            if value is None:
                return api_error(400, f"{key} must be a whole number", kind="BadRequest")
            args[key] = value
    return await _call(request, "logs", args, query=("instance", "lines"))


async def images(request: Request) -> Response:
    return await _call(request, "images", {})


async def image_diff(request: Request) -> Response:
    q = request.query_params
    if set(q) != {"a", "b"} or len(q.getlist("a")) != 1 or len(q.getlist("b")) != 1:
        return api_error(400, "give the two images as ?a=sha256:...&b=sha256:...", kind="BadRequest")
    return await _call(request, "image_diff", {"a": q["a"][:80], "b": q["b"][:80]}, query=("a", "b"))


async def jobs(request: Request) -> Response:
    args: dict[str, Any] = {}
    if "env" in request.query_params:
        args["env"] = request.query_params["env"]
    if "limit" in request.query_params:
        limit = whole(request.query_params["limit"], 5)
        if limit is None:
            return api_error(400, f"limit must be a whole number from 1 to {MAX_LIMIT}", kind="BadRequest")
        args["limit"] = limit
    return await _call(request, "jobs", args, pick="jobs", query=("env", "limit"))


async def jobs_route(request: Request) -> Response:
    """GET and POST /api/v1/jobs: one route, so that a 405 lists both in `Allow`."""
    return await (submit(request) if request.method == "POST" else jobs(request))


async def submit(request: Request) -> Response:
    if not bearer_cred(request):
        return api_error(401, "an API token is needed", "Authorization: Bearer sbx_...", "AuthError")
    try:
        body = loads(await read_body(request, MAX_JSON))
    except BodyTooLarge:
        return api_error(413, f"the body is over {MAX_JSON} bytes", kind="TooLarge")
    except (ValueError, UnicodeDecodeError) as e:
        return api_error(
            400,
            f"malformed JSON: {str(e)[:200]}",
            'e.g. {"kind": "verify", "args": {"env": "staging-1"}}',
            "BadRequest",
        )
    if not isinstance(body, dict) or set(body) != {"kind", "args"}:
        return api_error(400, 'the body must be {"kind": KIND, "args": {...}}', kind="BadRequest")
    return await _call(request, "submit", body, 201)


async def cancel(request: Request) -> Response:
    job_id = whole(request.path_params["id"])
    if job_id is None:
        return api_error(400, "a job id is a number", kind="BadRequest")
    return await _call(request, "cancel", {"id": job_id})


async def dismiss(request: Request) -> Response:
    job_id = whole(request.path_params["id"])
    if job_id is None:
        return api_error(400, "a job id is a number", kind="BadRequest")
    return await _call(request, "dismiss", {"id": job_id})


async def hook(request: Request) -> Response:
    """POST /hooks/NAME: the raw body and headers go to the root side, which checks everything."""
    try:
        body = await read_body(request, MAX_HOOK)
    except BodyTooLarge:
        return api_error(413, f"the body is over {MAX_HOOK} bytes", kind="TooLarge")
    headers: dict[str, str] = {}
    for k, v in request.headers.items():
        if len(headers) >= HOOK_HEADERS:
            return api_error(431, "too many headers", kind="BadRequest")
        headers[k] = v[:4096]
    args = {
        "name": request.path_params["name"][:40],
        "headers": headers,
        "body": base64.b64encode(body).decode(),
    }
    try:
        return JSONResponse(await rpc(request, "hook", {}, args), 202)
    except RPCError as e:
        return rpc_error(e)


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/openapi.json", openapi),
        Route("/api/v1/whoami", whoami),
        Route("/api/v1/envs", envs),
        Route("/api/v1/envs/{name}", env),
        Route("/api/v1/envs/{name}/logs", logs),
        Route("/api/v1/images", images),
        Route("/api/v1/images/diff", image_diff),
        Route("/api/v1/jobs", jobs_route, methods=["GET", "POST"]),
        Route("/api/v1/jobs/{id}", cancel, methods=["DELETE"]),
        Route("/api/v1/jobs/{id}/dismiss", dismiss, methods=["POST"]),
        Route("/hooks/{name}", hook, methods=["POST"]),
    ]

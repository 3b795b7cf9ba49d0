"""The JSON API under /api/v1 (bearer tokens only) and the webhook endpoint /hooks/NAME.

GET envs, envs/NAME, images and jobs answer what `sandbox ls --json`, `status --json` (without the
live probe) and `images --json` print, and the job rows; POST jobs queues one job, DELETE jobs/ID
cancels a queued one, POST jobs/ID/dismiss settles an interrupted one. /api/v1/openapi.json describes them.
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
)
from sandbox.web.rpcproto import RPCError, loads

HOOK_HEADERS = 100


async def _call(
    request: Request, method: str, args: dict[str, Any], status: int = 200, pick: str | None = None
) -> Response:
    cred = bearer_cred(request)
    if not cred:
        return api_error(401, "an API token is needed", "Authorization: Bearer sbx_...", "AuthError")
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


async def images(request: Request) -> Response:
    return await _call(request, "images", {})


async def jobs(request: Request) -> Response:
    args: dict[str, Any] = {}
    if "env" in request.query_params:
        args["env"] = request.query_params["env"]
    if "limit" in request.query_params:
        limit = request.query_params["limit"]
        if not limit.isdigit() or len(limit) > 5:
            return api_error(400, "limit must be a whole number from 1 to 1000", kind="BadRequest")
        args["limit"] = int(limit)
    return await _call(request, "jobs", args, pick="jobs")


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
    raw = request.path_params["id"]
    if not raw.isdigit() or len(raw) > 18:
        return api_error(400, "a job id is a number", kind="BadRequest")
    return await _call(request, "cancel", {"id": int(raw)})


async def dismiss(request: Request) -> Response:
    raw = request.path_params["id"]
    if not raw.isdigit() or len(raw) > 18:
        return api_error(400, "a job id is a number", kind="BadRequest")
    return await _call(request, "dismiss", {"id": int(raw)})


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


def _op(summary: str, responses: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"bearer": []}],
        "responses": {code: {"description": text} for code, text in responses.items()},
        **extra,
    }


_COMMON = {"401": "no valid token", "403": "the role does not allow it"}
_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}]
OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sandbox deploy API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "hint": {}},
            },
            "JobRequest": {
                "type": "object",
                "required": ["kind", "args"],
                "additionalProperties": False,
                "properties": {
                    "kind": {
                        "enum": [
                            "up",
                            "verify",
                            "promote",
                            "rollback",
                            "resume",
                            "maintenance",
                            "readonly",
                            "extend",
                            "down",
                            "pipeline",
                        ]
                    },
                    "args": {"type": "object"},
                },
            },
        },
    },
    "paths": {
        "/api/v1/whoami": {"get": _op("the token's user and roles", {"200": "the user", **_COMMON})},
        "/api/v1/envs": {"get": _op("the envs you may view (sandbox ls --json)", {"200": "envs", **_COMMON})},
        "/api/v1/envs/{name}": {
            "get": _op(
                "one env (sandbox status --json)",
                {"200": "the env", "404": "unknown", **_COMMON},
                parameters=_NAME,
            )
        },
        "/api/v1/images": {"get": _op("the images (sandbox images --json)", {"200": "images", **_COMMON})},
        "/api/v1/jobs": {
            "get": _op("jobs, newest first", {"200": "jobs", **_COMMON}),
            "post": _op(
                "queue a job",
                {"201": "queued", "400": "bad kind or arguments", "413": "body too large", **_COMMON},
                requestBody={
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/JobRequest"}}},
                },
            ),
        },
        "/api/v1/jobs/{id}": {
            "delete": _op(
                "cancel a queued job",
                {"200": "cancelled", "404": "unknown", "409": "not queued", **_COMMON},
                parameters=_ID,
            )
        },
        "/api/v1/jobs/{id}/dismiss": {
            "post": _op(
                "dismiss an interrupted job: its env's queue moves on",
                {"200": "dismissed", "404": "unknown", "409": "not an unsettled interrupted job", **_COMMON},
                parameters=_ID,
            )
        },
    },
}


async def openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def routes() -> list[BaseRoute]:
    return [
        Route("/api/v1/openapi.json", openapi),
        Route("/api/v1/whoami", whoami),
        Route("/api/v1/envs", envs),
        Route("/api/v1/envs/{name}", env),
        Route("/api/v1/images", images),
        Route("/api/v1/jobs", jobs, methods=["GET"]),
        Route("/api/v1/jobs", submit, methods=["POST"]),
        Route("/api/v1/jobs/{id}", cancel, methods=["DELETE"]),
        Route("/api/v1/jobs/{id}/dismiss", dismiss, methods=["POST"]),
        Route("/hooks/{name}", hook, methods=["POST"]),
    ]

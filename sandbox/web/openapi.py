"""The OpenAPI 3.1 document of /api/v1 (hand-written), served at /api/v1/openapi.json.

Job requests are one schema per kind, made from jobargs' table, so the document and the checks
cannot drift apart. The API answers with the statuses listed here and nothing else (a test runs
schemathesis over every operation: tests/unit/test_web_schema.py).
"""

from __future__ import annotations

from typing import Any

from sandbox.config.names import ENV_NAME_RE
from sandbox.web.jobargs import KINDS, SCHEMAS, TRIGGERS

MAX_LIMIT = 1000
MAX_ID = 10**18 - 1
# jobs.STATES (the HTTP side may not import web.jobs; a test compares them)
JOB_STATES = ("queued", "running", "done", "failed", "cancelled", "interrupted")


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_ERRORS = {
    "400": "a malformed request or argument",
    "401": "no valid token",
    "403": "the role does not allow it",
    "404": "not found",
    "409": "a conflict with the current state (a job not queued or not interrupted, an image gone)",
    "502": "the logs could not be read",
    "413": "the body is too large",
    "503": "the root side is busy",
}


def _op(
    summary: str, ok: tuple[str, str, dict[str, Any]], errors: tuple[str, ...], **extra: Any
) -> dict[str, Any]:
    code, text, schema = ok
    responses: dict[str, Any] = {code: {"description": text, "content": _json(schema)}}
    for e in ("401", "403", "503", *errors):
        responses[e] = {"description": _ERRORS[e], "content": _json(_ref("Error"))}
        if e == "401":
            responses[e]["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "required": True}}
    return {"summary": summary, "security": [{"bearer": []}], "responses": responses, **extra}


def _job_request(kind: str) -> dict[str, Any]:
    spec = KINDS[kind]
    return {
        "type": "object",
        "required": ["kind", "args"],
        "additionalProperties": False,
        "properties": {
            "kind": {"const": kind},
            "args": {
                "type": "object",
                "required": [a for a, (_, required) in spec.items() if required],
                "additionalProperties": False,
                "properties": {a: SCHEMAS[check] for a, (check, _) in spec.items()},
            },
        },
    }


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_ENV_NAME = {"type": "string", "pattern": f"^(?:{ENV_NAME_RE})$"}
_ENV_ROW = {"type": "object", "required": ["name", "profile", "owner"]}
SCHEMAS_DOC: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message", "hint"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "hint": {"type": ["string", "null"]},
        },
    },
    "JobRequest": {
        "description": "one job: its kind and its arguments (a pipeline's promote is not its env)",
        "oneOf": [_job_request(k) for k in KINDS],
    },
    "Job": {
        "type": "object",
        "required": ["id", "kind", "env", "args", "who", "trigger", "state", "created"],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "kind": {"enum": list(KINDS)},
            "env": _ENV_NAME,
            "args": {"type": "object"},
            "who": {"type": "string"},
            "trigger": {"enum": list(TRIGGERS)},
            "state": {"enum": list(JOB_STATES)},
            "created": {"type": "number"},
            "started": _NUMBER_OR_NULL,
            "finished": _NUMBER_OR_NULL,
            "resolved": _NUMBER_OR_NULL,
            "worker_pid": {"type": ["integer", "null"]},
            "result": {"type": ["object", "null"]},
            "error": {"type": ["string", "null"]},
        },
    },
    "Whoami": {
        "type": "object",
        "required": ["name", "roles", "admin"],
        "properties": {
            "name": {"type": "string"},
            "roles": {"type": "object", "additionalProperties": {"type": "string"}},
            "admin": {"type": "boolean"},
        },
    },
    "Env": {
        "type": "object",
        "required": ["env", "jobs", "cancel", "buttons"],
        "properties": {
            "env": _ENV_ROW,
            "jobs": {"type": "array", "items": _ref("Job")},
            "cancel": {"type": "array", "items": {"type": "integer"}},
            "buttons": {"type": "array", "items": {"type": "string"}},
        },
    },
}

_NAME = [{"name": "name", "in": "path", "required": True, "schema": _ENV_NAME}]
_ID = [
    {
        "name": "id",
        "in": "path",
        "required": True,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ID},
    }
]
_JOBS_QUERY = [
    {"name": "env", "in": "query", "required": False, "schema": _ENV_NAME},
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
]
_JOBS = {"type": "array", "items": _ref("Job")}
_LOGS_QUERY = [
    {
        "name": "instance",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": 999},
    },
    {
        "name": "lines",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": 1000},
    },
]
_LOGS = {
    "type": "object",
    "required": ["env", "instance", "lines"],
    "properties": {
        "env": _ENV_NAME,
        "instance": {"type": "integer"},
        "lines": {"type": "array", "items": {"type": "string"}},
    },
}
_DIGEST = {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"}
_DIFF_QUERY = [{"name": k, "in": "query", "required": True, "schema": _DIGEST} for k in ("a", "b")]

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "sandbox deploy API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": SCHEMAS_DOC,
    },
    "paths": {
        "/api/v1/whoami": {"get": _op("the token's user and roles", ("200", "the user", _ref("Whoami")), ())},
        "/api/v1/envs": {
            "get": _op(
                "the envs you may view (sandbox ls --json)",
                ("200", "envs", {"type": "array", "items": _ENV_ROW}),
                (),
            )
        },
        "/api/v1/envs/{name}": {
            "get": _op(
                "one env (sandbox status --json, without the live probe) with its jobs and buttons",
                ("200", "the env", _ref("Env")),
                ("400", "404"),
                parameters=_NAME,
            )
        },
        "/api/v1/envs/{name}/logs": {
            "get": _op(
                "the app's last log lines of one instance (sandbox logs --json, as one list)",
                ("200", "the lines", _LOGS),
                ("400", "404", "502"),
                parameters=[*_NAME, *_LOGS_QUERY],
            )
        },
        "/api/v1/images": {
            "get": _op(
                "the images (sandbox images --json)",
                ("200", "images", {"type": "array", "items": {"type": "object"}}),
                (),
            )
        },
        "/api/v1/images/diff": {
            "get": _op(
                "what changed from image a to image b, two different images"
                " (sandbox image diff A B --limit 2000 --json)",
                ("200", "the diff", {"type": "object", "required": ["packages", "files"]}),
                ("400", "404"),
                parameters=_DIFF_QUERY,
            )
        },
        "/api/v1/jobs": {
            "get": _op("jobs, newest first", ("200", "jobs", _JOBS), ("400",), parameters=_JOBS_QUERY),
            "post": _op(
                "queue a job",
                ("201", "queued", _ref("Job")),
                ("400", "409", "413"),
                requestBody={"required": True, "content": _json(_ref("JobRequest"))},
            ),
        },
        "/api/v1/jobs/{id}": {
            "delete": _op(
                "cancel a queued job",
                ("200", "cancelled", _ref("Job")),
                ("400", "404", "409"),
                parameters=_ID,
            )
        },
        "/api/v1/jobs/{id}/dismiss": {
            "post": _op(
                "dismiss an interrupted job: its env's queue moves on",
                ("200", "dismissed", _ref("Job")),
                ("400", "404", "409"),
                parameters=_ID,
            )
        },
    },
}

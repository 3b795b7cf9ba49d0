"""The sample app: a page and a health endpoint. Replace it with yours; keep /healthz answering 200."""

import json
import os

from flask import Flask, Response

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Response:
    body = {
        "status": "ok",
        "env": os.environ.get("APP_ENV", ""),
        "image": os.environ.get("SANDBOX_IMAGE", ""),
    }
    return Response(json.dumps(body), mimetype="application/json")


@app.get("/")
def index() -> str:
    return "<h1>Hello from sandbox</h1>\n"

"""The example app: a health endpoint, a page, a slow endpoint and a small SQLite-backed note list."""

import json
import os
import sqlite3
import time

from flask import Flask, Response, request

import settings

app = Flask(__name__, static_folder="static")


def _image() -> str:
    return os.environ.get("SANDBOX_IMAGE", "unknown")


def _db() -> sqlite3.Connection:
    os.makedirs(settings.DATA_DIR, exist_ok=True)
    return sqlite3.connect(os.path.join(settings.DATA_DIR, "app.db"))


def _readonly() -> bool:
    return os.path.exists("/run/sandbox/readonly")


@app.get("/healthz")
def healthz() -> Response:
    body = {"status": "ok", "recipe": settings.RECIPE, "image": _image(), "env": settings.APP_ENV}
    return Response(json.dumps(body), mimetype="application/json")


@app.get("/")
def index() -> str:
    return f"<h1>{settings.GREETING}</h1><p>image {_image()}</p>"


@app.get("/slow")
def slow() -> str:
    seconds = min(float(request.args.get("s", "3")), 30.0)
    time.sleep(seconds)
    return f"slept {seconds}s\n"


@app.post("/notes")
def add_note() -> tuple[str, int]:
    if _readonly():
        return "read-only: try again shortly\n", 503
    with _db() as db:
        db.execute("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, text TEXT)")
        db.execute("INSERT INTO notes (text) VALUES (?)", (request.get_data(as_text=True)[:1000],))
    return "ok\n", 201

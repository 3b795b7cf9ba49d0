"""Smoke test of a running instance (`sandbox verify` runs it inside): exit 0 when the app answers."""

import json
import sys
import urllib.request

with urllib.request.urlopen("http://127.0.0.1:8000/healthz", timeout=5) as r:
    doc = json.load(r)
if doc.get("status") != "ok":
    sys.exit(f"unhealthy: {doc}")
with urllib.request.urlopen("http://127.0.0.1:8000/", timeout=5) as r:  # raises on a status >= 400
    r.read()
print("smoke ok")

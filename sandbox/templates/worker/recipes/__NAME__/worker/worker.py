"""The sample worker: `run` processes job files; `smoke` submits one and waits for its result.

A job is a file in $WORKER_DIR/inbox; its result (here: the text upper-cased) is written to
$WORKER_DIR/done under the same name. Replace `work()` with yours; keep /healthz answering.
"""

import json
import os
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DIR = os.environ.get("WORKER_DIR", "/var/lib/worker")
INBOX, DONE = os.path.join(DIR, "inbox"), os.path.join(DIR, "done")
PORT = int(os.environ.get("WORKER_PORT", "8000"))  # keep it equal to app.port of the recipe
POLL = 1.0  # seconds between looks at the inbox
STALE = 30.0  # /healthz fails when the loop has not come round for this long
last_loop = time.monotonic()
jobs_done = 0


def work(data: bytes) -> bytes:
    return data.upper()


def loop() -> None:
    global last_loop, jobs_done
    while True:
        for name in sorted(os.listdir(INBOX)):
            if name.startswith("."):  # a job still being written
                continue
            src = os.path.join(INBOX, name)
            with open(src, "rb") as f:
                result = work(f.read(1 << 20))
            tmp = os.path.join(DONE, "." + name)
            with open(tmp, "wb") as f:
                f.write(result)
            os.replace(tmp, os.path.join(DONE, name))
            os.unlink(src)
            jobs_done += 1
        last_loop = time.monotonic()
        time.sleep(POLL)


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/healthz":
            self.send_error(404)
            return
        age = time.monotonic() - last_loop
        ok = age < STALE
        body = json.dumps(
            {"status": "ok" if ok else "stuck", "last_loop_s": round(age, 1), "jobs": jobs_done}
        )
        self.send_response(200 if ok else 503)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode() + b"\n")

    def log_message(self, format: str, *args: object) -> None:
        pass  # health checks every half second would flood the journal


def run() -> None:
    threading.Thread(target=loop, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", PORT), Health).serve_forever()


def smoke() -> None:
    name = f"smoke-{uuid.uuid4().hex}"
    tmp = os.path.join(INBOX, "." + name)
    with open(tmp, "wb") as f:
        f.write(b"hello")
    os.replace(tmp, os.path.join(INBOX, name))
    result = os.path.join(DONE, name)
    deadline = time.monotonic() + 15
    while not os.path.exists(result):
        if time.monotonic() > deadline:
            sys.exit(f"the worker did not process job {name} within 15 s")
        time.sleep(0.2)
    with open(result, "rb") as f:
        assert f.read() == b"HELLO", "wrong result"
    os.unlink(result)
    print("smoke ok")


if __name__ == "__main__":
    {"run": run, "smoke": smoke}[sys.argv[1] if len(sys.argv) > 1 else "run"]()

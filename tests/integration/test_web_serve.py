"""`sandbox serve` for real, as root: the HTTP side is a child of uid sandbox-web (checked in
/proc/PID/status, with no supplementary group), the RPC socket is 0660 in a 0750 dir, the state DB
stays root's 0600, a user logs in over real HTTP on loopback, the schedules loop has set its mark, and
SIGTERM to the parent's pid ends both processes at once and removes the socket. Needs root (useradd,
setuid); no backend, no daemon."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from sandbox.state import StateDB
from sandbox.web.auth import Auth

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="sandbox serve needs root"),
]
REPO = Path(__file__).parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    ws: Path,
    port: int,
    run_dir: Path,
    *extra: str,
    env: dict[str, str] | None = None,
    stdout: int | None = None,
) -> subprocess.Popen[str]:
    """`sandbox serve` of workspace `ws` on 127.0.0.1:PORT, its stderr piped (its first line says
    where it serves and the HTTP side's pid)."""
    serve = [sys.executable, "-m", "sandbox", "-C", str(ws), "serve", "--listen", f"127.0.0.1:{port}"]
    return subprocess.Popen(
        [*serve, "--run-dir", str(run_dir), *extra],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )


def http_side_pid(proc: subprocess.Popen[str], max_lines: int = 1) -> int:
    """The HTTP child's pid, from the line of serve's stderr that names it: its first line, or one
    of its first `max_lines` (one line comes first per job the last stop interrupted)."""
    assert proc.stderr is not None
    lines = []
    for _ in range(max_lines):
        lines.append(proc.stderr.readline())
        m = re.search(r"HTTP side pid (\d+)", lines[-1])
        if m:
            return int(m.group(1))
        if not lines[-1]:
            break
    raise AssertionError(f"sandbox serve did not name its HTTP side: {lines}")


def stop_serve(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to a serve this test started (by its pid), SIGKILL after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def status_field(pid: int, field: str) -> str:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:[ \t]*(.*)$", text, re.M)
    assert m
    return m.group(1).strip()


def test_serve_json_says_where_it_listens_on_one_stdout_line(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    port = free_port()
    proc = start_serve(ws, port, Path(f"/tmp/sbx-serve-j{os.getpid()}"), "--json", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        doc = json.loads(proc.stdout.readline())
        assert doc["url"] == f"http://127.0.0.1:{port}" and doc["pid"] == proc.pid and doc["workers"] == 2
        assert Path(f"/proc/{doc['http_pid']}").exists()
        proc.terminate()
        assert proc.wait(timeout=20) == 0 and proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_serve_runs_http_as_an_unprivileged_user(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    Auth(StateDB(ws / ".sandbox" / "state.db")).add_user("alice", "correct horse battery", {"*": "viewer"})
    run_dir = Path(f"/tmp/sbx-serve-{os.getpid()}")
    port = free_port()
    proc = start_serve(ws, port, run_dir)
    try:
        child = http_side_pid(proc)
        deadline = time.monotonic() + 20
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=False) as c:
            while True:
                try:
                    login = c.get("/login")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            uids = status_field(child, "Uid").split()
            assert len(set(uids)) == 1 and uids[0] != "0"
            assert status_field(child, "Gid").split()[0] != "0"
            assert status_field(child, "Groups") == ""
            assert (run_dir.stat().st_mode & 0o777, run_dir.stat().st_uid) == (0o750, 0)
            sock = run_dir / "rpc.sock"
            assert sock.stat().st_mode & 0o777 == 0o660 and sock.stat().st_gid == run_dir.stat().st_gid
            db = ws / ".sandbox" / "state.db"
            assert (db.stat().st_mode & 0o777, db.stat().st_uid) == (0o600, 0)
            assert login.status_code == 200
            r = c.post(
                "/login",
                data={"csrf": c.cookies["sbx_csrf"], "user": "alice", "password": "correct horse battery"},
            )
            assert r.status_code == 303 and "sbx_session" in c.cookies
            assert c.get("/envs").status_code == 200
        with StateDB(db).transaction(write=False) as conn:  # the schedules loop looked at once
            assert conn.execute("SELECT count(*) FROM schedule_marks").fetchone()[0] == 1
        t0 = time.monotonic()
        proc.terminate()  # by its pid
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - t0 < 10  # the loop waits 20 s between looks, but not on a stop
        assert not Path(f"/proc/{child}").exists() and not sock.exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_serve_over_tls_with_secure_cookies(tmp_path: Path) -> None:
    """--tls-cert/--tls-key: HTTPS, a Secure session cookie; the root-only key reaches the HTTP side
    as a copy only sandbox-web can read, removed at stop."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    key.chmod(0o600)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    Auth(StateDB(ws / ".sandbox" / "state.db")).add_user("alice", "correct horse battery", {"*": "viewer"})
    run_dir = Path(f"/tmp/sbx-tls-{os.getpid()}")
    port = free_port()
    proc = start_serve(ws, port, run_dir, "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert proc.stderr is not None
        assert "https://" in proc.stderr.readline()
        deadline = time.monotonic() + 20
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}",
            verify=ssl.create_default_context(cafile=str(cert)),
            follow_redirects=False,
        ) as c:
            while True:
                try:
                    c.get("/login")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline and proc.poll() is None
                    time.sleep(0.1)
            copy = run_dir / "tls" / "key.pem"
            assert copy.stat().st_mode & 0o777 == 0o400 and copy.stat().st_uid != 0
            r = c.post(
                "/login",
                data={"csrf": c.cookies["sbx_csrf"], "user": "alice", "password": "correct horse battery"},
            )
            assert r.status_code == 303
            session = next(h for h in r.headers.get_list("set-cookie") if h.startswith("sbx_session"))
            assert "Secure" in session and "HttpOnly" in session
        proc.terminate()
        assert proc.wait(timeout=20) == 0
        assert not (run_dir / "tls").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_serve_ends_with_an_error_when_its_http_side_dies(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    run_dir = Path(f"/tmp/sbx-die-{os.getpid()}")
    proc = start_serve(ws, free_port(), run_dir)
    try:
        os.kill(http_side_pid(proc), signal.SIGKILL)  # the child this test's serve started
        assert proc.wait(timeout=20) != 0
        assert "the HTTP side ended with status" in proc.stderr.read()
        assert not (run_dir / "rpc.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_the_http_side_ends_when_serve_is_killed(tmp_path: Path) -> None:
    """SIGKILL to `sandbox serve` (no chance to stop its child): the HTTP side gets SIGTERM from the
    kernel (PR_SET_PDEATHSIG) and ends, so that a restarted serve binds the same port again."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "sandbox.yaml").write_text("")
    run_dir = Path(f"/tmp/sbx-pdeath-{os.getpid()}")
    port = free_port()
    procs = [start_serve(ws, port, run_dir)]
    child = 0
    try:
        for proc in procs[:1]:
            child = http_side_pid(proc)
            assert status_field(child, "SigCgt")  # it runs
            os.kill(proc.pid, signal.SIGKILL)  # the serve this test started, by its pid
            proc.wait(timeout=10)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{child}").exists():
                assert time.monotonic() < deadline, "the HTTP side outlived its root side"
                time.sleep(0.05)
        procs.append(start_serve(ws, port, run_dir))
        again = procs[-1]
        assert again.stderr is not None
        assert "HTTP side pid" in again.stderr.readline()
        again.terminate()
        assert again.wait(timeout=20) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if child and Path(f"/proc/{child}").exists():  # the HTTP side of the serve killed here
            os.kill(child, signal.SIGKILL)
        shutil.rmtree(run_dir, ignore_errors=True)

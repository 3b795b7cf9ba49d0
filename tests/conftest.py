"""Shared test settings: integration tests need root and real tools; in CI a missing one FAILS."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REQUIRED_TOOLS = ("mmdebstrap", "apt-get", "dpkg-deb", "unshare", "chroot", "mount")


def integration_problem() -> str | None:
    if os.geteuid() != 0:
        return "integration tests need root (mmdebstrap --mode=root, overlayfs)"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (run ./install.sh)"
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlayfs (modprobe overlay)"
    return None


def integration_required() -> bool:
    return os.environ.get("SANDBOX_REQUIRE_INTEGRATION") == "1" or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problem = integration_problem()
    if problem is None or integration_required():
        return  # in CI the tests run and the fixture below fails them loudly
    for item in items:
        if "integration" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=problem))


@pytest.fixture(autouse=True)
def _integration_prerequisites(request: pytest.FixtureRequest) -> None:
    if "integration" in request.node.keywords:
        problem = integration_problem()
        if problem is not None:
            pytest.fail(f"integration prerequisites missing: {problem}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    """In CI nothing may be skipped: a skip there means a tool or daemon is missing, which is a failure."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and integration_required() and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must not happen: {report.longrepr}"


RUNTIME_ROOT = "/var/lib/sandbox/"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Remove the runtime dirs under /var/lib/sandbox of the workspaces this run made (each records
    its runtime dir in .sandbox/runtime): unpacked images, 1-2 GB each, that nothing else would ever
    remove. Only those of this run's basetemp (a pytest run beside it has its own), and only when
    nothing is mounted below one and no container of it runs (a test that failed to clean up leaves
    its evidence). xdist workers leave it to the controller."""
    if hasattr(session.config, "workerinput"):
        return
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None:
        return
    try:
        base = factory.getbasetemp()
    except (OSError, ValueError):
        return
    with open("/proc/self/mountinfo") as f:
        mounted = [line.split()[4] for line in f]
    for marker in _runtime_markers(str(base)):
        try:
            runtime = Path(marker).read_text().strip()
        except OSError:
            continue
        name = runtime[len(RUNTIME_ROOT) :]
        if not runtime.startswith(RUNTIME_ROOT) or not name or "/" in name or name.startswith("."):
            continue
        if any(m == runtime or m.startswith(runtime + "/") for m in mounted):
            continue
        lxcpath = os.path.join(runtime, "lxc")
        if os.path.isdir(lxcpath) and shutil.which("lxc-ls"):
            running = subprocess.run(
                ["lxc-ls", "-P", lxcpath, "--running"], capture_output=True, text=True, check=False
            )
            if running.stdout.strip():
                continue
        shutil.rmtree(runtime, ignore_errors=True)


def _runtime_markers(base: str, depth: int = 5) -> list[str]:
    """The .sandbox/runtime files of the workspaces below `base` (not inside any .sandbox: the
    unpacked images there are large trees)."""
    found = []
    for dirpath, dirnames, _ in os.walk(base):
        if ".sandbox" in dirnames:
            dirnames.remove(".sandbox")
            marker = os.path.join(dirpath, ".sandbox", "runtime")
            if os.path.isfile(marker):
                found.append(marker)
        if dirpath[len(base) :].count(os.sep) >= depth:
            dirnames.clear()
    return found

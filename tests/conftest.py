"""Shared test settings: integration tests need root and real tools; in CI a missing one FAILS."""

from __future__ import annotations

import os
import shutil

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

"""`sandbox doctor`: what this host has and lacks for each backend, each problem with its fix.

Every check reads files (/proc, /sys, /etc), looks tools up on PATH or asks a daemon's socket with a
short timeout: no subprocess, so that the whole run stays well under a second. The host's paths are
injectable (`Host`), so each check runs against a fake tree in the tests.

This package's top imports only the light `base` (the CLI's option list needs BACKENDS); the checks
are in `sandbox.doctor.run`.
"""

from __future__ import annotations

from sandbox.doctor.base import BACKENDS, DEFAULT_BACKEND, Check, Host

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Check", "Host"]

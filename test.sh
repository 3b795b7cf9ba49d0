#!/bin/sh
# Quick start, command 2 of 2: install the test needs and run the whole suite
# (ruff, mypy, the import layers, unit and integration tests against real mmdebstrap, lxc, docker,
# lxd, libvirt). .ci/run calls this.
#   ./test.sh [pytest args...]
set -eu
cd "$(dirname "$0")"
HERE=$(pwd)
VENV=${SANDBOX_VENV:-$HERE/.venv}

# the daemons of the lxd, docker and libvirt backends (their tests need them running), first:
# they also bring what pip needs to build the backends' SDKs (libvirt-dev for libvirt-python)
scripts/backends.sh
SANDBOX_EXTRAS="[test]" ./install.sh --no-run
# wrk: the promotion tests count its socket errors across promotions
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }

echo ">> ruff"
"$VENV/bin/ruff" check sandbox tests bench
"$VENV/bin/ruff" format --check sandbox tests bench
echo ">> mypy"
"$VENV/bin/mypy" sandbox
echo ">> import layers"
"$VENV/bin/lint-imports"
echo ">> pytest"
exec "$VENV/bin/python" -m pytest -ra "$@"

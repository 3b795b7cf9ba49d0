#!/bin/sh
# Quick start, command 2 of 2: install the test needs and run the whole suite
# (ruff, mypy, the import layers, unit and integration tests against real mmdebstrap, lxc, docker,
# lxd, libvirt). .ci/run calls this.
#   ./test.sh [pytest args...]   (with args: one pytest run with them, e.g. a single test file)
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
# openssh-server: each test host of the multi-host tests runs its own sshd (scripts/testhosts.sh).
# A policy-rc.d that denies every service start keeps the package from starting a machine-wide sshd
# (it needs no systemd: without one its postinst would start /etc/init.d/ssh, which we do not want)
if [ ! -x /usr/sbin/sshd ]; then
    POLICY=/usr/sbin/policy-rc.d
    OURS=""
    if [ ! -e "$POLICY" ]; then printf '#!/bin/sh\nexit 101\n' >"$POLICY" && chmod 755 "$POLICY" && OURS=1; fi
    RC=0
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null; } || RC=$?
    if [ -n "$OURS" ]; then rm -f "$POLICY"; fi
    [ "$RC" = 0 ] || { echo "error: apt-get could not install openssh-server" >&2; exit 1; }
fi

echo ">> ruff"
"$VENV/bin/ruff" check sandbox tests bench
"$VENV/bin/ruff" format --check sandbox tests bench
echo ">> mypy"
"$VENV/bin/mypy" sandbox
echo ">> import layers"
"$VENV/bin/lint-imports"
echo ">> pytest"
if [ $# -eq 0 ]; then
    # the whole suite: the unit tests (tmp dirs and free ports of their own, mostly waiting on
    # subprocesses) two at a time, then the integration tests one at a time (they share daemons,
    # the test hosts and the machine's 2 cores with load probes that count every failed request)
    RC=0
    "$VENV/bin/python" -m pytest -ra -n 2 tests/unit || RC=$?
    "$VENV/bin/python" -m pytest -ra --durations=25 tests/integration || RC=$?
    exit "$RC"
fi
exec "$VENV/bin/python" -m pytest -ra "$@"

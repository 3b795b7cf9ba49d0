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
# vagrant (and its libvirt provider): tests/unit/test_vagrant.py runs `vagrant validate` on
# vagrant/Vagrantfile (no box, no VM); --no-install-recommends keeps it to ~14 MB
dpkg-query -W -f='${Status}' vagrant-libvirt 2>/dev/null | grep -q "install ok installed" || { apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends vagrant vagrant-libvirt >/dev/null; }
# chromium: the browser test (tests/integration/test_web_browser.py) drives Debian's own chromium with
# Playwright's Python package from pip; `playwright install` (a downloaded browser) is never used
[ -x /usr/bin/chromium ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
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
"$VENV/bin/ruff" check sandbox tests bench scripts
"$VENV/bin/ruff" format --check sandbox tests bench scripts
echo ">> mypy"
"$VENV/bin/mypy" sandbox
echo ">> import layers"
"$VENV/bin/lint-imports"
echo ">> docs site (mkdocs build --strict, into a temp dir)"
SITE=$(mktemp -d /tmp/sandbox-site.XXXXXX)
NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --quiet -f mkdocs.yml -d "$SITE" || { rm -rf "$SITE"; exit 1; }
rm -rf "$SITE"
echo ">> pytest"
if [ $# -eq 0 ]; then
    # the whole suite: the unit tests (tmp dirs and free ports of their own, mostly waiting on
    # subprocesses) two at a time, then the integration tests in two phases:
    #  1. the VM tests (qemu under TCG: one core busy, the test waits on a booting guest) in a
    #     second process beside everything that needs neither the test hosts nor a quiet machine;
    #     each slice has its own workspace, network and router ports;
    #  2. the promotion and multi-host tests alone: their load probes count every failed request
    #     on this machine's 2 cores, and the test hosts exist once per machine.
    PY="$VENV/bin/python"
    IT=tests/integration
    RC=0
    "$PY" -m pytest -ra -n 2 tests/unit || RC=$?
    echo ">> integration, phase 1 (the VM tests run beside; their report follows)"
    VMLOG=$(mktemp /tmp/sandbox-vm-tests.XXXXXX)
    SANDBOX_CONTRACT_BACKENDS=libvirt "$PY" -m pytest -ra --durations=10 -k libvirt \
        "$IT/test_contract.py" "$IT/test_libvirt.py" "$IT/test_hosts_libvirt.py" >"$VMLOG" 2>&1 &
    VM=$!
    SANDBOX_CONTRACT_BACKENDS=lxc,docker,lxd "$PY" -m pytest -ra --durations=15 "$IT" \
        --ignore="$IT/test_libvirt.py" --ignore="$IT/test_hosts_libvirt.py" --ignore="$IT/test_promote.py" \
        --ignore="$IT/test_hosts.py" --ignore="$IT/test_testhosts.py" || RC=$?
    wait "$VM" || RC=$?
    echo ">> integration, phase 1: the VM tests"
    cat "$VMLOG" && rm -f "$VMLOG"
    echo ">> integration, phase 2: promotions under load and the test hosts"
    "$PY" -m pytest -ra --durations=15 "$IT/test_promote.py" "$IT/test_hosts.py" "$IT/test_testhosts.py" || RC=$?
    exit "$RC"
fi
exec "$VENV/bin/python" -m pytest -ra "$@"

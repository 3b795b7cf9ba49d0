#!/bin/sh
# Quick start, command 1 of 2: install everything sandbox needs on Debian 12 / Ubuntu (as root),
# then run the main job on the embedded default: build recipes/web.yaml and show the image.
#   ./install.sh            install + main job
#   ./install.sh --no-run   install only (used by test.sh)
set -eu
cd "$(dirname "$0")"
HERE=$(pwd)
VENV=${SANDBOX_VENV:-$HERE/.venv}

if [ "$(id -u)" != 0 ]; then
    echo "error: run as root (sandbox builds images with mmdebstrap and overlayfs mounts)" >&2
    echo "hint: sudo ./install.sh" >&2
    exit 1
fi

# system packages: the image builder and the Python to run sandbox with
# mmdebstrap builds images; lxc runs them (no daemon); nginx-light is each env's router;
# openssh-client, zstd and iptables serve production hosts (ssh, blobs compressed in flight, and the
# DNAT rule that publishes an instance on its host)
APT_PACKAGES="mmdebstrap python3 python3-venv python3-pip uidmap util-linux tar lxc nginx-light libnginx-mod-stream libnginx-mod-http-lua iproute2 curl openssh-client zstd iptables"
missing=""
for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo ">> apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# the tool itself, in a venv made from Debian's python3
if [ ! -x "$VENV/bin/python" ]; then
    echo ">> creating $VENV"
    /usr/bin/python3 -m venv "$VENV"
fi
mkdir -p "$HERE/.sandbox"
PIPLOG="$HERE/.sandbox/pip.log"
if ! "$VENV/bin/pip" install --disable-pip-version-check -e "$HERE${SANDBOX_EXTRAS:-}" >"$PIPLOG" 2>&1; then
    tail -20 "$PIPLOG" >&2
    echo "error: pip could not install sandbox (full log: $PIPLOG)" >&2
    exit 1
fi
ln -sf "$VENV/bin/sandbox" /usr/local/bin/sandbox
echo ">> sandbox $("$VENV/bin/sandbox" --version | awk '{print $NF}') installed as /usr/local/bin/sandbox"

[ "${1:-}" = "--no-run" ] && exit 0

# the main job on the embedded default (LXC, SQLite, mmdebstrap, nginx)
SB="$VENV/bin/sandbox"
echo ">> sandbox build web"
"$SB" build web
"$SB" image inspect web
if "$SB" ls --json | grep -q '"name": "staging-1"'; then
    echo ">> sandbox down staging-1 (left from an earlier run)"
    "$SB" down staging-1
fi
echo ">> sandbox up staging-1 --wait"
"$SB" up staging-1 --wait
URL=$("$SB" ls --json | "$VENV/bin/python" -c 'import json,sys; print([e["url"] for e in json.load(sys.stdin) if e["name"] == "staging-1"][0])')
echo ">> curl ${URL}healthz   (through staging-1's nginx router)"
curl -fsS "${URL}healthz"
echo
"$SB" ls

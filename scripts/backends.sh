#!/bin/sh
# Install and start the daemons of sandbox's optional backends (docker, lxd, libvirt) on
# Debian 12 / Ubuntu as root, on hosts with or without systemd. Idempotent: a daemon that
# already answers is left alone. test.sh runs this; run it yourself before using
# `backend: docker|lxd|libvirt` in a profile.
#   scripts/backends.sh [docker] [lxd] [libvirt]     (default: all three)
set -eu
LOGDIR=/var/log/sandbox-daemons
mkdir -p "$LOGDIR"
WANT=${*:-docker lxd libvirt}

apt_install() {
    missing=""
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        echo ">> apt-get install$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Options::=--force-confnew \
            $missing >/dev/null
    fi
}

has_systemd() { [ -d /run/systemd/system ]; }

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    secs=$1; what=$2; shift 2
    i=0
    while ! "$@" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt $((secs * 5)) ]; then
            echo "error: $what did not come up in ${secs}s (log: $LOGDIR)" >&2
            exit 1
        fi
        sleep 0.2
    done
}

start_docker() {
    apt_install docker.io
    if docker info >/dev/null 2>&1; then return; fi
    echo ">> starting dockerd"
    if has_systemd; then systemctl start docker; else
        nohup dockerd >"$LOGDIR/dockerd.log" 2>&1 &
    fi
    wait_for 60 dockerd docker info
}

start_lxd() {
    apt_install lxd btrfs-progs
    if ! lxd waitready --timeout=1 >/dev/null 2>&1; then
        echo ">> starting lxd"
        if has_systemd; then systemctl start lxd || systemctl start snap.lxd.daemon; else
            nohup lxd --group root >"$LOGDIR/lxd.log" 2>&1 &
        fi
        lxd waitready --timeout=120
    fi
    # `lxd init --auto` cannot pick a bridge subnet on these hosts: set up storage by hand
    # (sandbox gives each instance its own NIC, so no managed network is needed)
    lxc storage show default >/dev/null 2>&1 || lxc storage create default dir >/dev/null
    lxc profile device show default 2>/dev/null | grep -q "^root:" ||
        lxc profile device add default root disk path=/ pool=default >/dev/null
    # sandbox's own pool on btrfs (a sparse loop file): an instance is a snapshot of its image
    # (~0.5 s) instead of a full copy (~10-25 s on `dir`). Without loop devices or btrfs, sandbox
    # uses the default profile's pool.
    if ! lxc storage show sandbox >/dev/null 2>&1; then
        if grep -qw btrfs /proc/filesystems && losetup -f >/dev/null 2>&1; then
            lxc storage create sandbox btrfs size="${SANDBOX_LXD_POOL_SIZE:-30GiB}" >/dev/null ||
                echo "note: no btrfs pool for LXD (instances are full copies on the default pool)" >&2
        fi
    fi
}

start_libvirt() {
    # libvirt-dev, pkg-config, python3-dev and gcc build libvirt-python (the `libvirt` extra)
    apt_install libvirt-daemon-system qemu-system-x86 qemu-utils libvirt-dev pkg-config python3-dev gcc e2fsprogs
    if virsh -c qemu:///system version >/dev/null 2>&1; then return; fi
    echo ">> starting libvirtd"
    if has_systemd; then systemctl start libvirtd; else
        mkdir -p /var/log/libvirt
        pgrep -x virtlogd >/dev/null || virtlogd -d
        pgrep -x libvirtd >/dev/null || libvirtd -d
    fi
    wait_for 60 libvirtd virsh -c qemu:///system version
}

for b in $WANT; do
    case "$b" in
        docker) start_docker ;;
        lxd) start_lxd ;;
        libvirt) start_libvirt ;;
        *) echo "error: unknown backend $b (docker, lxd or libvirt)" >&2; exit 2 ;;
    esac
done

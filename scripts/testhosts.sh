#!/bin/sh
# A multi-host test rig on one machine: N "hosts", each a network namespace with its own address on a
# test bridge, a private mount namespace (its own /var/lib/sandbox-host, /var/lib/lxc, nginx config,
# logs and /run) and its own sshd with a host key made at run time. The multi-host integration tests
# use it; the recipe is ../shared/TESTBED.md "Test hosts". One rig per machine (the names are fixed).
#
#   scripts/testhosts.sh up N [DIR]        make hosts sbxh1..sbxhN (N 1..9) at 10.250.0.11..1N
#   scripts/testhosts.sh down [DIR]        stop everything in them, delete them and DIR
#   scripts/testhosts.sh cut I | heal I    take host I off the test network / put it back
#   scripts/testhosts.sh stop-sshd I | start-sshd I
#   scripts/testhosts.sh exec I CMD...     run CMD inside host I's namespaces
#   scripts/testhosts.sh docker I...        start a docker engine in each host I (its own data root)
#
# DIR defaults to $TESTHOSTS_DIR, else the rig that is up (recorded in /run/sandbox-testhosts.dir),
# else /var/lib/sandbox-testhosts. DIR holds the keys, DIR/ssh_config (`ssh -F DIR/ssh_config sbxh1`),
# DIR/known_hosts and DIR/hosts.json. It must not be under /root or /run, and uid 100000 (container
# root of an unprivileged LXC container) must be able to traverse every directory on the way.
# Needs a sh with `local` (dash, bash, busybox sh).
# shellcheck disable=SC3043
set -eu

BRIDGE=sbxtb0
NET=10.250.0
CURRENT=/run/sandbox-testhosts.dir
DEFAULT_DIR=/var/lib/sandbox-testhosts
MARKER=.sandbox-testhosts
FW_COMMENT=sandbox-testhosts
SELF=$(readlink -f "$0")
# the paths each host has to itself: bound over from DIR/sbxhI/<dir>, in this order
PRIVATE="sandbox-host:/var/lib/sandbox-host lxc:/var/lib/lxc docker:/var/lib/docker nginx-etc:/etc/nginx nginx-log:/var/log/nginx nginx-lib:/var/lib/nginx lxc-log:/var/log/lxc run:/run"

die() { echo "error: $*" >&2; exit 1; }
step() {  # step DESCRIPTION COMMAND...: run COMMAND, or say which step failed and stop
    local what="$1"
    shift
    "$@" || die "$what failed: $*"
}
usage() { sed -n '7,13p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

pick_dir() {  # pick_dir [DIR]
    if [ -n "${1:-}" ]; then echo "$1"
    elif [ -n "${TESTHOSTS_DIR:-}" ]; then echo "$TESTHOSTS_DIR"
    elif [ -s "$CURRENT" ]; then cat "$CURRENT"
    else echo "$DEFAULT_DIR"; fi
}

check_dir() {  # an absolute path, not in a place a host hides or uid 100000 cannot reach
    local d="$1" p part
    case "$d" in
        /) die "DIR may not be /" ;;
        /*) ;;
        *) die "DIR must be an absolute path: $d" ;;
    esac
    case "$d" in
        *[!A-Za-z0-9._/-]*) die "DIR may hold only letters, digits, '.', '_', '-' and '/' (it goes into ssh configs): $d" ;;
    esac
    case "$d/" in
        /root/*) die "DIR may not be under /root (0700: container root, uid 100000, cannot traverse it)" ;;
        /run/* | /var/run/*) die "DIR may not be under /run (each host has its own /run)" ;;
        /var/lib/sandbox-host/* | /var/lib/lxc/* | /var/lib/docker/* | /etc/nginx/* | /var/log/nginx/* | /var/lib/nginx/*)
            die "DIR may not be under a path the hosts keep private: $d" ;;
    esac
    # from / down, so the error names the first directory that is closed
    p=""
    for part in $(echo "${d#/}" | tr / ' '); do
        p="$p/$part"
        [ -e "$p" ] || break
        setpriv --reuid=100000 --regid=100000 --clear-groups test -x "$p" ||
            die "uid 100000 cannot traverse $p (on the way to DIR $d): chmod o+x it or pick another DIR"
    done
}

is_ours() { [ -f "$1/$MARKER" ]; }

alive_as() {  # alive_as PIDFILE COMM: the pid in PIDFILE if that process runs and is COMM
    local pid
    [ -s "$1" ] || return 1
    pid=$(cat "$1")
    case "$pid" in '' | *[!0-9]*) return 1 ;; esac
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    echo "$pid"
}

holder_pid() {  # holder_pid DIR I: the `sleep infinity` that keeps host I's namespaces
    alive_as "$1/sbxh$2/holder.pid" sleep
}

host_index() {
    case "${1:-}" in [1-9]) ;; *) die "host index must be 1..9, got '${1:-}'" ;; esac
}

# -- up ---------------------------------------------------------------------------------------------

write_sshd_config() {  # write_sshd_config DIR I
    local h="$1/sbxh$2"
    cat >"$h/sshd_config" <<EOF
# sshd of test host sbxh$2 (scripts/testhosts.sh)
ListenAddress $NET.1$2
Port 22
HostKey $h/ssh_host_ed25519_key
PidFile $h/sshd.pid
AuthorizedKeysFile $1/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
MaxSessions 64
MaxStartups 64:30:128
Subsystem sftp internal-sftp
EOF
}

holder_setup() {  # holder_setup DIR/sbxhI NAME: runs inside host I's netns, in a new mount and uts
    # namespace; makes the host's private view, then becomes the `sleep infinity` that keeps it
    local h="$1" pair
    hostname "$2"
    # drop this namespace's copies of other runtimes' mounts (netns handles, overlay rootfs, loop-backed
    # pools, anything below /run): held here, they would keep those alive after their owners unmount them
    awk '{ for (i = 7; $i != "-"; i++); t = $(i + 1); s = $(i + 2); m = $5
           if (m != "/" && (t == "nsfs" || t == "overlay" || s ~ /^\/dev\/loop/ || m ~ /^\/run\//)) print m }' \
        /proc/self/mountinfo | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    # not `ip netns exec`: sysfs must show this netns' devices (LXC looks up bridges there) and the
    # cgroup mounts below /sys must survive (systemd in a container needs them)
    mount --rbind /sys/fs/cgroup "$h/cg"
    mount -t sysfs sysfs /sys
    mount --rbind "$h/cg" /sys/fs/cgroup
    umount -l "$h/cg"
    for pair in $PRIVATE; do
        mount --bind "$h/${pair%%:*}" "${pair#*:}"
    done
    mkdir -p /run/sshd /run/lock /run/lxc
    chmod 755 /run/sshd
    chmod 1777 /run/lock
    [ -e /run/shm ] || ln -s /dev/shm /run/shm
    echo $$ >"$h/holder.pid"
    exec sleep infinity
}

start_holder() {  # start_holder DIR I
    local h="$1/sbxh$2" n=0 bg
    rm -f "$h/holder.pid"
    setsid nsenter --net="/run/netns/sbxh$2" unshare --mount --uts --propagation private \
        "$SELF" _holder "$h" "sbxh$2" </dev/null >"$h/holder.log" 2>&1 &
    bg=$!
    n=0
    until holder_pid "$1" "$2" >/dev/null; do
        n=$((n + 1))
        if [ "$n" -gt 100 ] || ! running "$bg"; then
            cat "$h/holder.log" >&2
            die "the namespaces of sbxh$2 did not come up (log above: $h/holder.log)"
        fi
        sleep 0.1
    done
}

start_sshd() {  # start_sshd DIR I
    local h="$1/sbxh$2" holder n=0
    holder=$(holder_pid "$1" "$2") || die "sbxh$2 has no namespace holder (is the rig up? DIR=$1)"
    if alive_as "$h/sshd.pid" sshd >/dev/null; then return 0; fi
    rm -f "$h/sshd.pid"
    step "sshd config check of sbxh$2" nsenter -t "$holder" -n -m -u /usr/sbin/sshd -t -f "$h/sshd_config"
    # shellcheck disable=SC2094  # sshd -E appends its log; what it says before that goes there too
    step "starting sshd in sbxh$2 (log: $h/sshd.log)" nsenter -t "$holder" -n -m -u \
        /usr/sbin/sshd -f "$h/sshd_config" -E "$h/sshd.log" </dev/null >>"$h/sshd.log" 2>&1
    n=0
    until alive_as "$h/sshd.pid" sshd >/dev/null; do
        n=$((n + 1))
        if [ "$n" -gt 100 ]; then
            tail -20 "$h/sshd.log" >&2
            die "sshd of sbxh$2 wrote no pid file in 10 s (log: $h/sshd.log)"
        fi
        sleep 0.1
    done
    # keep hosts.json's sshd_pid current (a restart makes a new one)
    if [ -f "$1/hosts.json" ]; then
        sed -i "/\"sbxh$2\"/s/\"sshd_pid\": [0-9]*/\"sshd_pid\": $(cat "$h/sshd.pid")/" "$1/hosts.json"
    fi
}

stop_sshd() {  # stop_sshd DIR I: by its pid file only
    local h="$1/sbxh$2" pid n=0
    pid=$(alive_as "$h/sshd.pid" sshd) || return 0
    kill "$pid"
    n=0
    while running "$pid"; do
        n=$((n + 1))
        [ "$n" -gt 50 ] && kill -9 "$pid" 2>/dev/null
        sleep 0.1
    done
    rm -f "$h/sshd.pid"
}

start_docker() {  # start_docker DIR I: dockerd in host I (its /var/lib/docker and /run are private)
    local h="$1/sbxh$2" holder n=0
    command -v dockerd >/dev/null || die "missing dockerd (apt-get install docker.io)"
    holder=$(holder_pid "$1" "$2") || die "sbxh$2 has no namespace holder (is the rig up? DIR=$1)"
    if alive_as "$h/run/docker.pid" dockerd >/dev/null; then return 0; fi
    rm -f "$h/run/docker.pid"
    setsid nsenter -t "$holder" -n -m -u dockerd --pidfile /run/docker.pid \
        -H unix:///var/run/docker.sock </dev/null >>"$h/dockerd.log" 2>&1 &
    until nsenter -t "$holder" -n -m -u docker -H unix:///var/run/docker.sock version >/dev/null 2>&1; do
        n=$((n + 1))
        if [ "$n" -gt 300 ]; then
            tail -20 "$h/dockerd.log" >&2
            die "dockerd of sbxh$2 did not answer in 30 s (log: $h/dockerd.log)"
        fi
        sleep 0.1
    done
}

stop_docker() {  # stop_docker DIR I: remove its containers, then stop dockerd by its pid file
    local h="$1/sbxh$2" holder pid ids n=0
    pid=$(alive_as "$h/run/docker.pid" dockerd) || return 0
    if holder=$(holder_pid "$1" "$2"); then
        ids=$(nsenter -t "$holder" -n -m docker -H unix:///var/run/docker.sock ps -aq 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # shellcheck disable=SC2086  # one id per word
            nsenter -t "$holder" -n -m docker -H unix:///var/run/docker.sock rm -f $ids >/dev/null 2>&1 || true
        fi
    fi
    kill "$pid" 2>/dev/null || true
    while running "$pid"; do
        n=$((n + 1))
        [ "$n" -gt 150 ] && kill -9 "$pid" 2>/dev/null
        sleep 0.1
    done
}

write_client_files() {  # write_client_files DIR N: ssh_config, known_hosts, hosts.json
    local d="$1" n="$2" opts json i h
    : >"$d/known_hosts"
    : >"$d/ssh_config"
    opts="    User root
    IdentityFile $d/client_key
    IdentitiesOnly yes
    UserKnownHostsFile $d/known_hosts
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    UpdateHostKeys no
    BatchMode yes"
    json="["
    i=1
    while [ "$i" -le "$n" ]; do
        h=$d/sbxh$i
        printf '%s %s\n' "$NET.1$i" "$(cut -d' ' -f1,2 "$h/ssh_host_ed25519_key.pub")" >>"$d/known_hosts"
        printf 'Host sbxh%s\n    HostName %s\n%s\n\n' "$i" "$NET.1$i" "$opts" >>"$d/ssh_config"
        [ "$i" -gt 1 ] && json="$json,"
        json="$json
  {\"name\": \"sbxh$i\", \"address\": \"$NET.1$i\", \"ssh\": \"root@$NET.1$i\", \"sshd_pid\": $(cat "$h/sshd.pid"), \"holder_pid\": $(cat "$h/holder.pid")}"
        i=$((i + 1))
    done
    printf 'Host %s.1*\n%s\n' "$NET" "$opts" >>"$d/ssh_config"
    printf '%s\n]\n' "$json" >"$d/hosts.json"
}

fw_rule() {  # fw_rule -I|-D: hosts talk to each other across the bridge (docker sets FORWARD DROP
    # and br_netfilter sends bridged frames through it)
    command -v iptables >/dev/null || return 0
    if [ "$1" = -I ]; then
        iptables -C FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$FW_COMMENT" -j ACCEPT \
            2>/dev/null ||
            step "allowing traffic between the hosts (iptables)" iptables -I FORWARD 1 -i "$BRIDGE" \
                -o "$BRIDGE" -m comment --comment "$FW_COMMENT" -j ACCEPT
    else
        while iptables -D FORWARD -i "$BRIDGE" -o "$BRIDGE" -m comment --comment "$FW_COMMENT" \
            -j ACCEPT 2>/dev/null; do :; done
    fi
}

up() {  # up N DIR
    local n="$1" d="$2" t pair i name h out
    case "$n" in [1-9]) ;; *) die "N must be 1..9, got '$n'" ;; esac
    for t in ip nsenter unshare setsid setpriv ssh ssh-keygen /usr/sbin/sshd; do
        command -v "$t" >/dev/null || die "missing tool $t (apt-get install iproute2 util-linux openssh-server openssh-client)"
    done
    check_dir "$d"
    # already up (this rig or one left over): tear it down first
    if [ -s "$CURRENT" ] && [ "$(cat "$CURRENT")" != "$d" ]; then down "$(cat "$CURRENT")"; fi
    down "$d"
    if [ -e "$d" ] && [ -n "$(ls -A "$d")" ]; then
        die "$d exists, is not empty and was not made by this script: pick another DIR"
    fi
    step "making $d" mkdir -p "$d"
    chmod 755 "$d"
    touch "$d/$MARKER"
    echo "$d" >"$CURRENT"
    step "making the client key" ssh-keygen -q -t ed25519 -N '' -C sandbox-testhosts-client -f "$d/client_key"
    cp "$d/client_key.pub" "$d/authorized_keys"

    # mount points the hosts bind their private dirs over (empty dirs, when this machine lacks them)
    # (recorded, so `down` removes the ones it made)
    for pair in $PRIVATE; do
        if [ ! -e "${pair#*:}" ]; then
            step "making mount point ${pair#*:}" mkdir -p "${pair#*:}"
            echo "${pair#*:}" >>"$d/made-mountpoints"
        fi
    done

    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        step "making bridge $BRIDGE" ip link add "$BRIDGE" type bridge
    fi
    step "addressing bridge $BRIDGE" ip addr replace "$NET.1/24" dev "$BRIDGE"
    step "bringing up bridge $BRIDGE" ip link set "$BRIDGE" up
    fw_rule -I

    i=1
    while [ "$i" -le "$n" ]; do
        name=sbxh$i; h=$d/$name
        for pair in $PRIVATE; do mkdir -p "$h/${pair%%:*}"; done
        mkdir -p "$h/cg"
        chmod 755 "$h" "$h/sandbox-host" "$h/lxc" "$h/run"
        step "copying /etc/nginx for $name" cp -a /etc/nginx/. "$h/nginx-etc/"
        step "copying /var/lib/nginx for $name" cp -a /var/lib/nginx/. "$h/nginx-lib/"
        step "netns $name" ip netns add "$name"
        step "veth of $name" ip link add "$name-v" type veth peer name eth0 netns "$name"
        step "attaching $name-v to $BRIDGE" ip link set "$name-v" master "$BRIDGE" up
        step "address of $name" ip -n "$name" addr add "$NET.1$i/24" dev eth0
        step "eth0 of $name" ip -n "$name" link set eth0 up
        step "lo of $name" ip -n "$name" link set lo up
        step "default route of $name" ip -n "$name" route add default via "$NET.1"
        step "ip_forward in $name" nsenter --net="/run/netns/$name" sysctl -qw net.ipv4.ip_forward=1
        step "host key of $name" ssh-keygen -q -t ed25519 -N '' -C "$name" -f "$h/ssh_host_ed25519_key"
        write_sshd_config "$d" "$i"
        start_holder "$d" "$i"
        start_sshd "$d" "$i"
        i=$((i + 1))
    done
    write_client_files "$d" "$n"

    # every host answers over ssh with strict host-key checking, or `up` fails naming it
    i=1
    while [ "$i" -le "$n" ]; do
        if ! out=$(ssh -F "$d/ssh_config" -o ConnectTimeout=5 "sbxh$i" hostname 2>&1); then
            tail -5 "$d/sbxh$i/sshd.log" >&2
            die "ssh into sbxh$i failed: $out"
        fi
        [ "$out" = "sbxh$i" ] || die "sbxh$i answered as '$out'"
        i=$((i + 1))
    done
    echo ">> $n test hosts up: ssh -F $d/ssh_config sbxh1 (hosts: $d/hosts.json)"
}

# -- down -------------------------------------------------------------------------------------------

lxc_stop_in() {  # lxc_stop_in DIR I LXCPATH NAME: LXCPATH as the host sees it
    # LXC's command socket is abstract (per netns) and named after the lxcpath the container was
    # started with, so lxc-stop runs in the host's namespaces with the host's own path
    local holder
    if holder=$(holder_pid "$1" "$2"); then
        nsenter -t "$holder" -n -m lxc-stop -k -P "$3" -n "$4" >/dev/null 2>&1 || true
    elif [ -e "/run/netns/sbxh$2" ]; then
        nsenter --net="/run/netns/sbxh$2" lxc-stop -k -P "$3" -n "$4" >/dev/null 2>&1 || true
    fi
}

stop_containers() {  # stop_containers DIR I: lxc-stop -k every container of host I
    local h="$1/sbxh$2" holder mnt pid args rest name lxcdir conf c real
    command -v lxc-stop >/dev/null || return 0
    # the running ones, from their monitors ("[lxc monitor] LXCPATH NAME") in the host's mount ns
    if holder=$(holder_pid "$1" "$2"); then
        mnt=$(readlink "/proc/$holder/ns/mnt" 2>/dev/null || true)
        for pid in $(ns_members "$mnt" ""); do
            args=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || continue
            case "$args" in
                "[lxc monitor] "*" "*)
                    rest=${args#"[lxc monitor] "}
                    name=${rest#* }
                    lxc_stop_in "$1" "$2" "${rest%% *}" "${name%% *}" ;;
            esac
        done
    fi
    # and every container defined in the host's lxc dirs (its image store is not walked)
    for lxcdir in "$h/lxc" $(find "$h/sandbox-host" -maxdepth 6 -path "$h/sandbox-host/store" -prune \
        -o -type d -name lxc -print -prune 2>/dev/null); do
        for conf in "$lxcdir"/*/config; do
            [ -f "$conf" ] || continue
            c=$(dirname "$conf"); real=$(dirname "$c")
            case "$real" in
                "$h/lxc") lxc_stop_in "$1" "$2" /var/lib/lxc "$(basename "$c")" ;;
                *) lxc_stop_in "$1" "$2" "/var/lib/sandbox-host${real#"$h/sandbox-host"}" "$(basename "$c")" ;;
            esac
        done
    done
}

glob_quote() { printf '%s' "$1" | sed 's/[][*?\\]/\\&/g'; }

ns_members() {  # ns_members MNT NET: pids whose mount ns is MNT or whose net ns is NET ("mnt:[N]")
    local expr=""
    set -f  # $expr holds glob patterns for find, not for the shell (this runs in a $(...) subshell)
    [ -n "$1" ] && expr="-name mnt -lname $(glob_quote "$1")"
    [ -n "$2" ] && expr="${expr:+$expr -o }-name net -lname $(glob_quote "$2")"
    # shellcheck disable=SC2086
    find /proc -mindepth 3 -maxdepth 3 -path '/proc/[0-9]*/ns/*' \( $expr \) 2>/dev/null | cut -d/ -f3 | sort -u
}

running() {  # running PID: it exists and is not a zombie (pid 1 here may reap slowly)
    [ -r "/proc/$1/status" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

kill_host_processes() {  # kill_host_processes DIR I: every process in host I's mount or network ns
    # (sshd, its sessions, nginx or anything else started inside), by pid
    local holder mnt="" net="" sig left pid
    holder=$(holder_pid "$1" "$2") || holder=""
    if [ -n "$holder" ]; then mnt=$(readlink "/proc/$holder/ns/mnt" 2>/dev/null || true); fi
    if [ -e "/run/netns/sbxh$2" ]; then
        net=$(nsenter --net="/run/netns/sbxh$2" readlink /proc/self/ns/net 2>/dev/null || true)
    fi
    if [ -z "$mnt" ] && [ -z "$net" ]; then return 0; fi
    for sig in TERM TERM TERM TERM TERM TERM TERM TERM TERM TERM KILL; do
        left=""
        for pid in $(ns_members "$mnt" "$net"); do
            [ "$pid" = $$ ] && continue
            running "$pid" || continue
            kill -s "$sig" "$pid" 2>/dev/null && left="$left $pid"
        done
        [ -z "$left" ] && return 0
        sleep 0.2
    done
    echo "warning: processes of sbxh$2 still running after SIGKILL:$left" >&2
}

down() {  # down DIR: tolerant of a half-made or half-removed rig
    local d="$1" i name m
    i=1
    while [ "$i" -le 9 ]; do
        name=sbxh$i
        if [ -d "$d/$name" ] || [ -e "/run/netns/$name" ]; then
            stop_containers "$d" "$i"
            stop_docker "$d" "$i"
            stop_sshd "$d" "$i"
            kill_host_processes "$d" "$i"
            if [ -e "/run/netns/$name" ]; then step "deleting netns $name" ip netns del "$name"; fi
        fi
        # the peer of the host's veth goes away with its netns, a moment after `ip netns del`: a link
        # that is gone by the time it is deleted is what we wanted
        if ip link show "$name-v" >/dev/null 2>&1 && ! ip link del "$name-v" 2>/dev/null; then
            ip link show "$name-v" >/dev/null 2>&1 && die "deleting $name-v failed: ip link del $name-v"
        fi
        i=$((i + 1))
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then step "deleting bridge $BRIDGE" ip link del "$BRIDGE"; fi
    fw_rule -D
    if [ -e "$d" ]; then
        if is_ours "$d"; then
            if [ -f "$d/made-mountpoints" ]; then
                while read -r m; do rmdir "$m" 2>/dev/null || true; done <"$d/made-mountpoints"
            fi
            grep -q " ${d}[/ ]" /proc/self/mountinfo && die "something is still mounted below $d: not removing it"
            step "removing $d" rm -rf "$d"
        elif [ -n "$(ls -A "$d" 2>/dev/null)" ]; then
            echo "note: $d was not made by this script: left alone" >&2
        fi
    fi
    if [ -s "$CURRENT" ] && [ "$(cat "$CURRENT")" = "$d" ]; then rm -f "$CURRENT"; fi
}

# -- main -------------------------------------------------------------------------------------------

[ "$(id -u)" = 0 ] || die "run as root (network and mount namespaces)"
cmd=${1:-}
[ -n "$cmd" ] || usage
shift
case "$cmd" in
    up)
        [ $# -ge 1 ] || usage
        up "$1" "$(pick_dir "${2:-}")" ;;
    down)
        down "$(pick_dir "${1:-}")" ;;
    cut | heal)
        host_index "${1:-}"
        ip link show "sbxh$1-v" >/dev/null 2>&1 || die "sbxh$1 is not up"
        if [ "$cmd" = cut ]; then state=down; else state=up; fi
        step "$cmd sbxh$1" ip link set "sbxh$1-v" "$state" ;;
    stop-sshd)
        host_index "${1:-}"
        stop_sshd "$(pick_dir "${2:-}")" "$1" ;;
    start-sshd)
        host_index "${1:-}"
        start_sshd "$(pick_dir "${2:-}")" "$1" ;;
    exec)
        host_index "${1:-}"
        i=$1; shift
        [ $# -ge 1 ] || usage
        d=$(pick_dir "")
        holder=$(holder_pid "$d" "$i") || die "sbxh$i is not up (DIR=$d)"
        cd /
        exec nsenter -t "$holder" -n -m -u -- "$@" ;;
    docker)
        [ $# -ge 1 ] || usage
        d=$(pick_dir "")
        for i in "$@"; do host_index "$i"; done
        for i in "$@"; do start_docker "$d" "$i"; done ;;
    _holder) holder_setup "$1" "$2" ;;  # internal: start_holder runs this inside the namespaces
    *) usage ;;
esac

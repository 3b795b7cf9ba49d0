#!/bin/bash
# Smoke test of a running instance (`sandbox verify` runs it inside): the health path and the page.
set -eu

get() {  # GET $1 from the local nginx; prints the whole response (no curl in the image: bash's /dev/tcp)
    exec 3<>/dev/tcp/127.0.0.1/8000
    printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$1" >&3
    timeout 5 cat <&3
    exec 3<&-
}

for path in /healthz /; do
    response=$(get "$path")
    case "$response" in
    "HTTP/1.1 200"*) ;;
    *) echo "GET $path: ${response%%$'\r'*}" >&2; exit 1 ;;
    esac
done
echo "smoke ok"

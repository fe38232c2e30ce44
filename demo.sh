#!/usr/bin/env bash
# The whole Katana story on the example key-value server, on a fresh machine with python3 and gcc:
# build and snapshot releases v0 and v1, start the v0 server, show its bug, make the patch,
# apply it to the running server, show the fix, stop the server.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "setting up (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"

say "building and snapshotting releases v0 and v1 (scons release VERSION=...)"
for v in v0 v1; do scons -Q release VERSION=$v FORCE=1; done
ls releases/v0

say "starting the v0 server"
log=$(mktemp)
./releases/v0/kvd 0 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
cat "$log"
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log")
kv=./releases/v0/kv

say "the v0 bug: GET ab answers with the value of key a (prefix match)"
$kv "$port" SET a 1
$kv "$port" SET color blue
echo "GET ab  -> $($kv "$port" GET ab)"

say "making the patch (scons patch FROM=v0 TO=v1)"
scons -Q patch FROM=v0 TO=v1
katana list patches/kvd-v0-v1.po

say "applying it to the running server (pid $server)"
katana apply patches/kvd-v0-v1.po "$server"
katana status "$server"

say "after the patch: same process, same data, bug fixed"
echo "GET ab    -> $($kv "$port" GET ab)"
echo "GET color -> $($kv "$port" GET color)"
echo "SET b\\x01 -> $(printf 'SET b\001 x\n' | $kv "$port" -)"

say "stopping the server"
kill "$server"

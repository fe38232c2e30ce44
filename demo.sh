#!/usr/bin/env bash
# The whole Katana story on the example key-value server, on a fresh machine with python3, gcc
# and patch. One source tree changes from release to release, in a working copy (demo/):
#   v0        start the server, show its bug
#   v0 -> v1  make the patches (the fix is in libkvstore.so, the store library the server
#             loads; kvd has its own), check and apply both on the running server, show the
#             fix; revert the library's patch; apply it again
#   v1 -> v2  a struct grows: the library's signed patch moves every live entry to the new
#             layout, then kvd's adds the command that reads it
#   status    what each object of the server runs now, and who patched it; katana ps; the
#             patch that moved data cannot be reverted
# VERBOSE=1 ./demo.sh prints the compiler command lines too. tests/test_demo.py runs it.
set -euo pipefail
cd "$(dirname "$0")"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }
change() { printf '$ patch -p1 < %s\n' "$1"; patch -p1 < "$1"; }

if [ -n "${KATANA_DEMO_VENV:-}" ]; then  # an environment with katana already (the tests')
    export PATH="$KATANA_DEMO_VENV/bin:$PATH"
else
    say "setting up (.venv)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install -q -e '.[test]'
    export PATH="$PWD/.venv/bin:$PATH"
fi
verbose=${VERBOSE:+VERBOSE=1}

say "a working copy of the example (demo/): the tree of example_project/src is at v0"
rm -rf demo && mkdir demo && cp -r SConstruct site_scons example_project demo/
cd demo
run scons -Q $verbose release VERSION=v0

say "starting the v0 server"
log=$(mktemp)
./releases/v0/kvd 0 >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q listening "$log" && break; sleep 0.1; done
cat "$log"
port=$(sed -n 's/.*listening on 127.0.0.1:\([0-9]*\).*/\1/p' "$log")
kv() { printf '%-14s -> %s\n' "$*" "$(./releases/v0/kv "$port" "$@")"; }

say "the v0 bug: GET ab answers with the value of key a (prefix match)"
kv SET a 1
kv SET color blue
kv GET ab

say "release v1: the fix, as a change to the tree, built and snapshotted"
change example_project/changes/v0-v1.diff
run scons -Q $verbose release VERSION=v1
run scons -Q patch FROM=v0 TO=v1
echo "two patches: the lookup fix is in libkvstore.so, the store library the server loads;"
echo "kvd's own patch brings the new reply and the key check"
run katana list patches/libkvstore.so-v0-v1.po

say "applying them to the running server (pid $server): pre-flight checks, then the library's patch, then kvd's"
run katana check patches/libkvstore.so-v0-v1.po "$server"
run katana check patches/kvd-v0-v1.po "$server"
run katana apply patches/libkvstore.so-v0-v1.po "$server"
run katana apply patches/kvd-v0-v1.po "$server"

say "after the patches: same process, same data, bug fixed"
kv GET ab
kv GET color
kv SET '' 2

say "revert the library's patch: the lookup of v0 is back (the bug), then the fix goes back in"
run katana revert "$server" patches/libkvstore.so-v0-v1.po
kv GET ab
run katana -q apply patches/libkvstore.so-v0-v1.po "$server"
kv GET ab

say "release v2: struct entry gains a field (hits) in the middle; signed patches"
change example_project/changes/v1-v2.diff
run scons -Q $verbose release VERSION=v2
run katana keygen ci
run scons -Q patch FROM=v1 TO=v2 SIGN_KEY=ci.key
echo "how the library's patch moves the live table (katana list, its transformed variables):"
katana list patches/libkvstore.so-v1-v2.po | sed -n '/^Variables transformed/,/^$/p'
run katana verify patches/libkvstore.so-v1-v2.po --key ci.pub
cat > policy.conf <<'EOF'
{requireSignature: true, trustedKeys: [ci.pub]}
EOF
run cat policy.conf
cp patches/libkvstore.so-v1-v2.po unsigned.po
echo "an unsigned copy is refused under this policy, before the server is touched:"
run katana -c policy.conf apply unsigned.po "$server" || echo "(exit status $?)"
echo "the library's patch first (the table moved, store_hits added), then kvd's (HITS calls it):"
run katana -c policy.conf apply patches/libkvstore.so-v1-v2.po "$server"
run katana -c policy.conf apply patches/kvd-v1-v2.po "$server"

say "after v2: every entry moved to the new layout, the data stored under v0 is still there"
kv GET color
kv GET a
kv HITS color
kv STATS

say "what the server runs now, object by object, and who patched it"
run katana status "$server"
echo "the host's view: every patched process"
run katana ps
echo "the library's v1 -> v2 patch moved data to a new layout: it cannot be reverted"
run katana revert "$server" patches/libkvstore.so-v1-v2.po || echo "(exit status $?)"

say "stopping the server (the working copy stays in demo/)"
kill "$server"

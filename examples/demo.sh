#!/usr/bin/env bash
# `make demo`: run agentbox's main job on this machine, offline, in a real sandbox: an agent (the
# offline `replay` model playing examples/fix-the-test/replay.json) fixes a project whose test fails,
# with everything journaled; then `agentbox exec` shows what the sandbox prevents.
set -uo pipefail
arg=${1:-agentbox}
if [ -e "$arg" ]; then AGENTBOX=$(readlink -f "$arg"); else AGENTBOX=$(command -v "$arg"); fi
failed=0
expect() { [ "$1" = "$2" ] || { echo "demo: expected exit $2, got $1" >&2; failed=1; }; }
here=$(cd "$(dirname "$0")" && pwd)
ws=$(mktemp -d /tmp/agentbox-demo-XXXXXX)   # kept: the journals are in it (said at the end)
cp -r "$here/hello-project/." "$ws/"
[ "$(id -u)" = 0 ] && chown -R nobody: "$ws" 2>/dev/null
cd "$ws"

# Bold headings on a terminal only, and never with NO_COLOR set (https://no-color.org).
if [ -t 1 ] && [ -z "${NO_COLOR:-}" ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
step() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; }

step agentbox doctor
"$AGENTBOX" doctor

export AGENTBOX_HOME="$ws/.agentbox-home"   # keep the demo's journals with the demo
agent_ws="$ws/fix-the-test"
mkdir -p "$agent_ws" && cp -r "$here/fix-the-test/project/." "$agent_ws/"
[ "$(id -u)" = 0 ] && chown -R nobody: "$agent_ws" 2>/dev/null
step "cd fix-the-test && python3 -m unittest -q   # the project's test fails"
(cd "$agent_ws" && python3 -m unittest -q 2>&1 | tail -n 4)
step "agentbox run --name fix-calc --model replay:examples/fix-the-test/replay.json --memory 512M --timeout 5m --task '...'"
# PYTHONDONTWRITEBYTECODE: the replayed edit lands within the same second as Python's bytecode cache and
# keeps the file's size, which Python's cache check cannot tell apart; a real model is never that fast.
(cd "$agent_ws" && "$AGENTBOX" run --name fix-calc --model "replay:$here/fix-the-test/replay.json" \
   --env PYTHONDONTWRITEBYTECODE=1 --memory 512M --pids 128 --timeout 5m --max-steps 20 \
   --task "The unit tests of this project fail. Find out why, fix the code (not the tests), run the tests, and finish.")
rc=$?; echo "exit: $rc"; expect $rc 0
step "diff -u project/calc.py fix-the-test/calc.py   # what the agent changed"
diff -u "$here/fix-the-test/project/calc.py" "$agent_ws/calc.py"
step "cd fix-the-test && python3 -m unittest -q   # the tests pass now"
(cd "$agent_ws" && PYTHONDONTWRITEBYTECODE=1 python3 -m unittest -q 2>&1 | tail -n 2)
rc=$?; expect $rc 0
step "agentbox logs fix-calc   # the journal: every model turn, tool call and result"
"$AGENTBOX" logs fix-calc 2>&1 | head -n 60
step "agentbox confessions; agentbox inspect fix-calc; agentbox journal verify fix-calc"
"$AGENTBOX" confessions
"$AGENTBOX" inspect fix-calc
"$AGENTBOX" journal verify fix-calc || failed=1

step agentbox exec --memory 256M --pids 64 --timeout 30s -- sh ./test.sh
"$AGENTBOX" exec --memory 256M --pids 64 --timeout 30s -- sh ./test.sh
rc=$?; echo "exit: $rc"; expect $rc 0

step "agentbox exec -- sh -c 'echo pwned > /etc/motd'   # the system is read-only"
"$AGENTBOX" exec -- sh -c 'echo pwned > /etc/motd'
rc=$?; echo "exit: $rc"; expect $rc 2

step "agentbox exec -- sh -c 'ls /home /root'   # host private directories do not exist"
"$AGENTBOX" exec -- sh -c 'ls /home /root'
echo "exit: $?"

step "agentbox exec -- bash -c 'echo > /dev/tcp/1.1.1.1/443'   # no network"
"$AGENTBOX" exec -- bash -c 'echo > /dev/tcp/1.1.1.1/443'
echo "exit: $?"

step "agentbox exec --timeout 2s -- sh -c 'sleep 60 & sleep 60'   # the whole tree dies at the timeout"
"$AGENTBOX" exec --timeout 2s -- sh -c 'sleep 60 & sleep 60'
rc=$?; echo "exit: $rc (124 = timeout)"; expect $rc 124

step "agentbox exec --memory 64M -- tail /dev/zero   # OOM kill, named"
if [ "$(id -u)" = 0 ]; then
  "$AGENTBOX" exec --memory 64M -- tail /dev/zero
  rc=$?; echo "exit: $rc (137 = killed; the message above says why)"; expect $rc 137
else
  echo "(skipped: needs root or a delegated cgroup for a real memory limit; see agentbox doctor)"
fi

step "agentbox exec --name demo-tests --memory 32M -- sh -c 'sh ./test.sh; tail /dev/zero'   # a journaled run"
"$AGENTBOX" exec --name demo-tests --memory 32M -- sh -c 'sh ./test.sh; tail /dev/zero'
rc=$?; echo "exit: $rc"
step "agentbox ps --all; agentbox logs demo-tests; agentbox confessions"
"$AGENTBOX" ps --all
"$AGENTBOX" logs demo-tests
"$AGENTBOX" confessions
"$AGENTBOX" journal verify demo-tests || failed=1

step "ls -l   # files the sandbox wrote belong to the workspace's owner"
"$AGENTBOX" exec -- sh -c 'echo result > output.txt'
ls -l "$ws"
cat <<EOF

The demo's projects and journals are kept in $ws:
  AGENTBOX_HOME=$ws/.agentbox-home $AGENTBOX ps --all
  rm -rf $ws        # when you are done with them
agentbox itself is $AGENTBOX.
To have it on PATH: sudo make install   (installs to /usr/local; PREFIX=... for elsewhere)
EOF
[ $failed = 0 ] && printf '\n%sdemo: ok%s\n' "$bold" "$plain" || { echo "demo: FAILED" >&2; exit 1; }

#!/usr/bin/env bash
# `make bench` (journal part): append/verify throughput, durable-record latency, and the cost of
# journaling a command that prints 100 MB compared with the same ephemeral exec.
# Usage: bench/journal.sh path/to/agentbox
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
BENCH=$(dirname "$AGENTBOX")/agentbox-bench
"$BENCH"
home=$(mktemp -d /var/tmp/agentbox-bench-home-XXXXXX)
ws=$(mktemp -d /var/tmp/agentbox-bench-ws-XXXXXX)
trap 'rm -rf "$home" "$ws"' EXIT
cmd="yes 'building target 17 of 240: compiler output line' | head -c 100000000"
echo
echo "100 MB of output, stdout to /dev/null (hyperfine, 5 runs each):"
hyperfine -N -w 1 -r 5 --export-json "$home/e.json" "$AGENTBOX exec --workspace $ws -- /bin/sh -c \"$cmd\"" >/dev/null 2>&1
i=0
AGENTBOX_HOME=$home hyperfine -w 1 -r 5 --export-json "$home/j.json" \
  "AGENTBOX_HOME=$home $AGENTBOX exec --workspace $ws --name bench-\$RANDOM -- /bin/sh -c \"$cmd\" > /dev/null" >/dev/null 2>&1
python3 - "$home" <<'PY'
import json, statistics, sys
h = sys.argv[1]
e = statistics.median(json.load(open(f"{h}/e.json"))["results"][0]["times"])
j = statistics.median(json.load(open(f"{h}/j.json"))["results"][0]["times"])
print(f"  ephemeral exec  {e*1000:7.0f} ms")
print(f"  journaled exec  {j*1000:7.0f} ms   ({j/e:.2f}x; target <= 1.3x)")
PY

#!/usr/bin/env bash
# `make bench` (journal part): append/verify throughput, durable-record latency, and the cost of
# journaling a command that prints 100 MB, compared in the same run with the same ephemeral exec and
# with dd writing and fdatasync'ing the same 100 MB (the floor for storing it durably on this disk).
# Target (issue 11): journaled - ephemeral <= 1.2 x dd.
# Usage: bench/journal.sh path/to/agentbox [runs]
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
RUNS=${2:-10}
BENCH=$(dirname "$AGENTBOX")/agentbox-bench
"$BENCH"
home=$(mktemp -d /var/tmp/agentbox-bench-home-XXXXXX)
ws=$(mktemp -d /var/tmp/agentbox-bench-ws-XXXXXX)
trap 'rm -rf "$home" "$ws"' EXIT
cmd="yes 'building target 17 of 240: compiler output line' | head -c 100000000"
/bin/sh -c "$cmd" > "$home/100mb"
echo
echo "100 MB of output, stdout to /dev/null (hyperfine, $RUNS runs each, same disk for all):"
hyperfine -N -w 1 -r "$RUNS" --export-json "$home/e.json" "$AGENTBOX exec --workspace $ws -- /bin/sh -c \"$cmd\"" >/dev/null 2>&1
# Each journaled run starts without the previous runs' files (not timed), as dd starts without its file.
AGENTBOX_HOME=$home hyperfine -w 1 -r "$RUNS" --prepare "rm -rf $home/runs" --export-json "$home/j.json" \
  "AGENTBOX_HOME=$home $AGENTBOX exec --workspace $ws --name bench-\$RANDOM -- /bin/sh -c \"$cmd\" > /dev/null" >/dev/null 2>&1
# The same journaled run storing nothing (a cap of one byte): what passing output through the
# supervisor costs by itself (the pipe, the relay), as against storing it.
AGENTBOX_HOME=$home hyperfine -w 1 -r "$RUNS" --prepare "rm -rf $home/runs" --export-json "$home/n.json" \
  "AGENTBOX_HOME=$home $AGENTBOX exec --workspace $ws --name bench-\$RANDOM --journal-output 1 -- /bin/sh -c \"$cmd\" > /dev/null 2>&1" >/dev/null 2>&1
hyperfine -N -w 1 -r "$RUNS" --prepare "rm -f $home/dd.out" --export-json "$home/d.json" \
  "dd if=$home/100mb of=$home/dd.out bs=1M conv=fdatasync status=none" >/dev/null 2>&1
python3 - "$home" <<'PY'
import json, statistics, sys
h = sys.argv[1]
def median(name):
    return statistics.median(json.load(open(f"{h}/{name}.json"))["results"][0]["times"])
e, j, n, d = median("e"), median("j"), median("n"), median("d")
print(f"  ephemeral exec            {e*1000:7.0f} ms")
print(f"  journaled exec            {j*1000:7.0f} ms")
print(f"  journaled, nothing stored {n*1000:7.0f} ms   (passing output through the supervisor: {(n-e)*1000:.0f} ms; storing it: {(j-n)*1000:.0f} ms)")
print(f"  dd, 100 MB + fdatasync    {d*1000:7.0f} ms")
ok = j - e <= 1.2 * d
print(f"  journaled - ephemeral     {(j-e)*1000:7.0f} ms   vs 1.2 x dd = {1.2*d*1000:.0f} ms: {'PASS' if ok else 'FAIL'}"
      f" ({(j-e)/d:.2f} x dd; {j/e:.2f}x the ephemeral run)")
PY

#!/usr/bin/env bash
# `make bench` (agent part), docs/benchmarks.md:
#  1. per-step overhead of `agentbox run` with a zero-latency model (replay): a session of N `shell`
#     steps against a session of one step, side by side with the same number of `bwrap ... sh -c true`
#     and plain `sh -c true` spawns (what one step's process costs without agentbox's loop);
#  2. memory per concurrent idle run (supervisor + sandbox, PSS) while 20 runs wait for a slow model;
#  3. 100 concurrent runs against the fake model server answering in 0.3 s: all must succeed.
# Usage: bench/agent.sh path/to/agentbox
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/agentbox-bench-agent-XXXXXX)
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
mkdir ws
export AGENTBOX_HOME="$work/home"
STEPS=${STEPS:-200}

python3 - "$STEPS" <<'PY'
import json, sys
n = int(sys.argv[1])
finish = {"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "done"}}]}
# Distinct arguments: the stuck-loop rule stops a run that repeats one call and result.
steps = [{"tool_calls": [{"name": "shell", "arguments": {"command": "true %d" % i}}]} for i in range(n)]
json.dump({"turns": steps + [finish]}, open("many.json", "w"))
json.dump({"turns": [finish]}, open("one.json", "w"))
PY
printf '#!/bin/sh\nfor i in $(seq %d); do /bin/sh -c true; done\n' "$STEPS" > spawn.sh
printf '#!/bin/sh\nfor i in $(seq %d); do bwrap --unshare-all --die-with-parent --ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib --symlink usr/lib64 /lib64 --proc /proc --dev /dev -- /bin/sh -c true; done\n' "$STEPS" > bwrap.sh

echo "agentbox: $AGENTBOX; kernel $(uname -r), $(nproc) CPUs"
echo "== 1. per-step overhead, $STEPS shell steps (replay model)"
cd ws
hyperfine -N -w 2 -r 10 --export-json ../steps.json \
  "$AGENTBOX run --model replay:$work/one.json --task x" \
  "$AGENTBOX run --model replay:$work/many.json --task x" \
  "sh $work/spawn.sh" "sh $work/bwrap.sh" >/dev/null 2>&1
cd ..
python3 - "$STEPS" <<'PY'
import json, sys
n = int(sys.argv[1])
r = [x["median"] for x in json.load(open("steps.json"))["results"]]
one, many, spawn, bw = r
print(f"  run with 1 step:        {one*1000:8.1f} ms (sandbox setup, journal, teardown)")
print(f"  run with {n} steps:   {many*1000:8.1f} ms")
print(f"  per step:               {(many-one)/n*1000:8.3f} ms  (target < 2 ms)")
print(f"  plain sh -c true:       {spawn/n*1000:8.3f} ms per spawn (the step's process alone)")
print(f"  bwrap sh -c true:       {bw/n*1000:8.3f} ms per sandboxed spawn (a fresh bwrap per command)")
PY

python3 "$here/Tests/FakeModelServer/fake_model_server.py" --key bench-key --violations "$work/violations" --port-file "$work/port" \
  >/dev/null 2>&1 &
server_pid=$!
for _ in $(seq 100); do [ -s "$work/port" ] && break; sleep 0.05; done
port=$(cat "$work/port")
export OPENAI_API_KEY=bench-key

echo "== 2. memory per idle run (20 runs waiting for a model that answers in 20 s)"
pids=()
for i in $(seq 20); do
  "$AGENTBOX" run --workspace "$work/ws" --model openai:gpt-4o --base-url "http://127.0.0.1:$port/a/idle/v1" --task x \
    >/dev/null 2>&1 &
  pids+=($!)
done
sleep 3
python3 - "${pids[@]}" <<'PY'
import os, sys
def field(pid, name, path="smaps_rollup"):
    """A kB field of /proc/PID/smaps_rollup (or status); 0 when the process is gone."""
    try:
        for line in open(f"/proc/{pid}/{path}"):
            if line.startswith(name + ":"): return int(line.split()[1])
    except OSError: pass
    return 0
pss = lambda pid: field(pid, "Pss")
anon = lambda pid: field(pid, "Anonymous")
rss = lambda pid: field(pid, "VmRSS", "status")
children = {}
for p in os.listdir("/proc"):
    if p.isdigit():
        try: ppid = int(open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[1])
        except OSError: continue
        children.setdefault(ppid, []).append(int(p))
sup = [int(p) for p in sys.argv[1:]]
inits = [c for p in sup for c in children.get(p, [])]
tp = sum(pss(p) for p in sup) + sum(pss(p) for p in inits)
print(f"  {len(sup)} supervisors, {len(inits)} sandbox inits")
print(f"  supervisor: RSS {sum(rss(p) for p in sup)/len(sup)/1024:.1f} MiB, PSS {sum(pss(p) for p in sup)/len(sup)/1024:.1f} MiB each")
print(f"  sandbox init: RSS {sum(rss(p) for p in inits)/max(1,len(inits))/1024:.1f} MiB, PSS {sum(pss(p) for p in inits)/max(1,len(inits))/1024:.1f} MiB each")
print(f"  per run (PSS, host + sandbox): {tp/len(sup)/1024:.1f} MiB  (target < 15 MiB)")
ta = sum(anon(p) for p in sup) + sum(anon(p) for p in inits)
print(f"  per run, anonymous memory only (what each more run adds, besides page tables): {ta/len(sup)/1024:.1f} MiB")
PY
kill -TERM "${pids[@]}" 2>/dev/null || true
wait "${pids[@]}" 2>/dev/null || true

echo "== 3. 100 concurrent runs against a model answering in 0.3 s (3 steps each)"
start=$(date +%s.%N)
pids=()
for i in $(seq 100); do
  "$AGENTBOX" run --workspace "$work/ws" --model openai:gpt-4o --base-url "http://127.0.0.1:$port/a/slow/v1" --task x \
    >/dev/null 2>"$work/err.$i" &
  pids+=($!)
done
ok=0; bad=0
for p in "${pids[@]}"; do if wait "$p"; then ok=$((ok+1)); else bad=$((bad+1)); fi; done
end=$(date +%s.%N)
echo "  $ok succeeded, $bad failed, in $(python3 -c "print(round($end-$start, 2))") s"
if [ "$bad" != 0 ]; then cat "$work"/err.* | grep -i error | sort | uniq -c | head; fi
[ -s "$work/violations" ] && { echo "  fake server saw malformed requests:"; head "$work/violations"; }
[ "$bad" = 0 ] || exit 1

echo "== 4. resume of a 1000-step run to its next model request (target < 100 ms)"
python3 - "$work/thousand.json" <<'PY'
import json, sys
turns = [{"text": "step %d" % i, "tool_calls": [{"name": "shell", "arguments": {"command": "echo %d > last.txt" % i}}],
          "usage": {"input_tokens": 1000 + i, "output_tokens": 50}} for i in range(1000)]
turns.append({"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "done"}}]})
json.dump({"turns": turns}, open(sys.argv[1], "w"))
PY
export AGENTBOX_HOME="$work/resume-home"
"$AGENTBOX" run --workspace "$work/ws" --name thousand --model "replay:$work/thousand.json" --max-steps 1000 --task t >/dev/null 2>&1 || true
cp -a "$AGENTBOX_HOME" "$work/resume-base"
for i in $(seq 10); do
  rm -rf "$AGENTBOX_HOME"; cp -a "$work/resume-base" "$AGENTBOX_HOME"
  t0=$(date +%s.%N)
  "$AGENTBOX" resume thousand --max-steps 1001 >/dev/null 2>&1
  "$AGENTBOX" logs thousand --json | T0=$t0 python3 -c '
import sys, json, os
from datetime import datetime
recs = [json.loads(l) for l in sys.stdin]
epoch = max(r["epoch"] for r in recs)
q = next(r for r in recs if r["type"] == "model.request" and r["epoch"] == epoch)
print((datetime.fromisoformat(q["ts"].replace("Z", "+00:00")).timestamp() - float(os.environ["T0"])) * 1000)'
done | sort -n | awk '{a[NR]=$1} END {printf "  command start -> first model.request: median %.0f ms, min %.0f, max %.0f (10 resumes of a 1000-step run)\n", a[int((NR+1)/2)], a[1], a[NR]}'


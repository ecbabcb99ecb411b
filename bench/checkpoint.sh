#!/usr/bin/env bash
# `make bench` (checkpoint part): workspace checkpoints on a workspace of 10,000 files / 1 GB where each
# step changes a few files (target: under 20 ms per step), the storage they take, fork time, and
# export/import size and time. All through the CLI: a replayed run whose steps append to 3 files and
# create 1, and whose `checkpoint` records say what each checkpoint cost (`ms`).
# Usage: bench/checkpoint.sh path/to/agentbox
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
work=$(mktemp -d /var/tmp/agentbox-bench-cp-XXXXXX)
trap 'rm -rf "$work"' EXIT
export AGENTBOX_HOME="$work/home"
STEPS=${CHECKPOINT_STEPS:-70}  # past the 64th step: one full walk (a safety net: docs/lifecycle.md)

echo "== workspace checkpoints: 10,000 files / 1 GB, $STEPS steps each changing 3 files and adding 1 (target < 20 ms per step)"
python3 - "$work/ws" "$work/session.json" "$STEPS" <<'PY'
import json, os, sys
ws, session, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
rnd = os.urandom(1 << 20)
for d in range(100):
    os.makedirs(f"{ws}/src/m{d}", exist_ok=True)
for i in range(9990):  # ~10 KB each: 100 MB
    with open(f"{ws}/src/m{i % 100}/f{i}.txt", "wb") as f:
        f.write(rnd[(i * 977) % 900000:][:10000])
for i in range(10):  # 90 MB each: 900 MB
    with open(f"{ws}/blob{i}.bin", "wb") as f:
        for k in range(90):
            f.write(rnd[k * 1000:] + rnd[:k * 1000])
turns = [{"tool_calls": [{"name": "shell", "arguments": {"command":
          f"echo {s} >> src/m{s % 100}/f{s}.txt; echo {s} >> src/m{(s + 7) % 100}/f{s + 100}.txt; "
          f"echo {s} >> src/m{(s + 13) % 100}/f{s + 200}.txt; echo new > src/new{s}.txt"}}]} for s in range(steps)]
turns.append({"tool_calls": [{"name": "finish", "arguments": {"status": "success", "summary": "done"}}]})
json.dump({"turns": turns}, open(session, "w"))
PY
echo "  workspace: $(find "$work/ws" -type f | wc -l) files, $(du -sm "$work/ws" | cut -f1) MB"
"$AGENTBOX" run --workspace "$work/ws" --name cp --model "replay:$work/session.json" --max-steps $((STEPS + 1)) --task t >/dev/null 2>&1
"$AGENTBOX" logs cp --json > "$work/records.jsonl"
python3 - "$work/records.jsonl" <<'PY'
import json, sys, statistics
cps = [r["data"] for r in map(json.loads, open(sys.argv[1])) if r["type"] == "checkpoint"]
first, rest = cps[0], [c for c in cps[1:] if c.get("changed")]
ms = sorted(c["ms"] for c in rest)
verdict = "PASS" if statistics.median(ms) < 20 else "FAIL"
print("  first checkpoint (every file hashed and stored): %.0f ms, %.0f MB stored" % (first["ms"], first.get("stored_bytes", 0) / 1e6))
print("  per step: median %.1f ms, p90 %.1f ms, max %.1f ms over %d steps (%s: target < 20 ms)"
      % (statistics.median(ms), ms[int(len(ms) * 0.9)], ms[-1], len(ms), verdict))
full = [c["ms"] for c in rest if c.get("scan") == "full"]
if full:
    print("  of which full walks (every 64th step): %s ms" % ", ".join("%.0f" % f for f in full))
grown = sum(c.get("stored_bytes", 0) for c in rest)
recs = sum(len(json.dumps(c)) for c in rest)
print("  storage per step: %.0f bytes of new content, %.0f bytes of checkpoint record" % (grown / len(rest), recs / len(rest)))
PY
echo "  objects: $(du -sm "$AGENTBOX_HOME/runs"/*/objects | cut -f1) MB for a 1 GB workspace and $STEPS steps"

echo "== fork at step $((STEPS / 2)) (writes the 1 GB workspace back from the checkpoint, then stops at its step budget)"
t0=$(date +%s.%N)
"$AGENTBOX" fork cp --at $((STEPS / 2)) --workspace "$work/forked" --max-steps $((STEPS / 2)) >/dev/null 2>&1 || [ $? = 3 ]
t1=$(date +%s.%N)
echo "  fork: $(python3 -c "print(round(($t1 - $t0) * 1000))") ms ($(find "$work/forked" -type f | wc -l) files)"

echo "== export / import of the run (journal + 1 GB workspace)"
t0=$(date +%s.%N)
"$AGENTBOX" export cp -o "$work/cp.tar" >/dev/null 2>&1
t1=$(date +%s.%N)
AGENTBOX_HOME="$work/home2" "$AGENTBOX" import "$work/cp.tar" --workspace "$work/imported" >/dev/null 2>&1
t2=$(date +%s.%N)
echo "  export: $(python3 -c "print(round(($t1 - $t0) * 1000))") ms, $(du -m "$work/cp.tar" | cut -f1) MB; import: $(python3 -c "print(round(($t2 - $t1) * 1000))") ms"

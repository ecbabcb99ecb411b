#!/usr/bin/env bash
# `make bench` (sandbox part): `agentbox exec -- /usr/bin/true` against bubblewrap (srt-style flags)
# and runc, in the same run, in alternating rounds; medians and ratios; then 50 concurrent execs.
# Usage: bench/sandbox.sh path/to/agentbox [rounds]
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
ROUNDS=${2:-10}
RUNS=${RUNS:-10}
work=$(mktemp -d /tmp/agentbox-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
mkdir ws

BWRAP=(bwrap --unshare-all --die-with-parent --new-session --ro-bind /usr /usr --symlink usr/bin /bin
       --symlink usr/lib /lib --symlink usr/lib64 /lib64 --symlink usr/sbin /sbin --ro-bind /etc /etc
       --proc /proc --dev /dev --tmpfs /tmp --bind "$work/ws" "$work/ws" --chdir "$work/ws" -- /usr/bin/true)

# runc: a bundle whose rootfs binds the host's /usr read-only (no image to unpack).
have_runc=0
if command -v runc >/dev/null && [ "$(id -u)" = 0 ]; then
  mkdir -p bundle/rootfs/{usr,proc,dev,tmp,etc} && (cd bundle/rootfs && ln -s usr/bin bin && ln -s usr/lib lib && ln -s usr/lib64 lib64)
  (cd bundle && runc spec)
  python3 - <<'PY'
import json
c = json.load(open("bundle/config.json"))
c["process"]["terminal"] = False
c["process"]["args"] = ["/usr/bin/true"]
c["root"] = {"path": "rootfs", "readonly": True}
c["mounts"].append({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]})
json.dump(c, open("bundle/config.json", "w"))
PY
  if runc run -b bundle bench-probe >/dev/null 2>&1; then have_runc=1; else echo "runc cannot run here; skipped"; fi
fi

cmds=("$AGENTBOX exec --workspace $work/ws -- /usr/bin/true" "${BWRAP[*]}")
names=("agentbox exec" "bwrap")
if [ $have_runc = 1 ]; then cmds+=("runc run -b $work/bundle bench-$$"); names+=("runc run"); fi

echo "agentbox: $AGENTBOX"
echo "kernel $(uname -r), $(nproc) CPUs; $ROUNDS alternating rounds x $RUNS runs each"
"$AGENTBOX" exec --workspace "$work/ws" -- /usr/bin/true  # warm the seccomp cache
for r in $(seq "$ROUNDS"); do
  for i in "${!cmds[@]}"; do
    hyperfine -N -w 2 -r "$RUNS" --export-json "r$r-$i.json" "${cmds[$i]}" >/dev/null 2>&1
  done
done
python3 - "$ROUNDS" "${#cmds[@]}" "${names[@]}" <<'PY'
import json, statistics, sys
rounds, n = int(sys.argv[1]), int(sys.argv[2]); names = sys.argv[3:]
med, p90 = [], []
for i in range(n):
    times = []
    for r in range(1, rounds + 1):
        times += json.load(open(f"r{r}-{i}.json"))["results"][0]["times"]
    m = statistics.median(times) * 1000
    med.append(m)
    q = statistics.quantiles(times, n=10)
    p90.append(q[-1] * 1000)
    print(f"{names[i]:15s} median {m:6.2f} ms   p10 {q[0]*1000:6.2f}   p90 {q[-1]*1000:6.2f}   ({len(times)} runs)")
for i in range(1, n):
    print(f"agentbox / {names[i]}: {med[0]/med[i]:.2f}x (p90 {p90[0]/p90[i]:.2f}x)")
PY

# Rootless: the same pair as an unprivileged user (nobody, through setpriv: both pay that exec), in a
# folder of its own. No cgroup here without delegation: agentbox falls back to rlimits (and says so).
if [ "$(id -u)" = 0 ] && id nobody >/dev/null 2>&1 && command -v setpriv >/dev/null; then
  rl="$work/rootless"
  mkdir -p "$rl/ws" "$rl/home"
  chown -R "$(id -u nobody):$(id -g nobody)" "$rl"
  chmod 755 "$work"
  AS="setpriv --reuid=$(id -u nobody) --regid=$(id -g nobody) --clear-groups env HOME=$rl/home"
  RL_BWRAP="${BWRAP[*]}"
  RL_BWRAP="${RL_BWRAP//$work\/ws/$rl/ws}"
  rlcmds=("$AS $AGENTBOX exec --workspace $rl/ws -- /usr/bin/true" "$AS $RL_BWRAP")
  if $AS "$AGENTBOX" exec --workspace "$rl/ws" -- /usr/bin/true 2>/dev/null && $AS $RL_BWRAP; then
    for r in $(seq "$ROUNDS"); do
      for i in 0 1; do
        hyperfine -N -w 2 -r "$RUNS" --export-json "rl$r-$i.json" "${rlcmds[$i]}" >/dev/null 2>&1
      done
    done
    echo
    echo "rootless (as nobody, both started through setpriv):"
    python3 - "$ROUNDS" <<'PY'
import json, statistics, sys
rounds = int(sys.argv[1]); med = []
for i, name in enumerate(["agentbox exec", "bwrap"]):
    times = []
    for r in range(1, rounds + 1):
        times += json.load(open(f"rl{r}-{i}.json"))["results"][0]["times"]
    q = statistics.quantiles(times, n=10); m = statistics.median(times) * 1000; med.append((m, q[-1] * 1000))
    print(f"{name:15s} median {m:6.2f} ms   p10 {q[0]*1000:6.2f}   p90 {q[-1]*1000:6.2f}   ({len(times)} runs)")
print(f"agentbox / bwrap: {med[0][0]/med[1][0]:.2f}x (p90 {med[0][1]/med[1][1]:.2f}x)")
PY
  else
    echo; echo "rootless: skipped (agentbox or bwrap cannot run as nobody here)"
  fi
fi

echo
echo "50 concurrent execs (wall time for all 50, median of 5):"
conc() { hyperfine -N -w 1 -r 5 --export-json "$2" "bash -c 'for i in \$(seq 50); do $1 & done; wait'" >/dev/null 2>&1
         python3 -c "import json,statistics,sys; t=json.load(open('$2'))['results'][0]['times']; print(f'  {sys.argv[1]:15s} {statistics.median(t)*1000:7.1f} ms')" "$3"; }
conc "$AGENTBOX exec --workspace $work/ws -- /usr/bin/true" c1.json "agentbox exec"
conc "${BWRAP[*]}" c2.json "bwrap"

echo
# A distribution, not a mean: some phases (the cgroup v1 attach) are usually fast and sometimes slow.
echo "where the time goes (AGENTBOX_TIMING=1, 40 runs, microseconds per phase: p50, p90, max):"
for i in $(seq 40); do AGENTBOX_TIMING=1 "$AGENTBOX" exec --workspace "$work/ws" -- /usr/bin/true 2>&1; done |
  python3 -c '
import sys, collections
acc = collections.defaultdict(list)
for line in sys.stdin:
    if "timing: " not in line: continue
    phase, us = line.split("timing: ", 1)[1].rsplit(" ", 2)[0], line.split()[-2]
    acc[phase].append(int(us))
for phase, v in acc.items():
    v.sort()
    print(f"  {phase:32s} {v[len(v) // 2]:7d} {v[int(len(v) * 0.9)]:7d} {v[-1]:7d}")
'

#!/usr/bin/env bash
# `make bench` (network part), docs/benchmarks.md:
#  1. the model gateway's added latency per call: N sequential calls to a local fake upstream, from a
#     client inside a bring-your-own-agent run (through the gateway) against the same client on the
#     host calling the upstream directly; and the time to the first streamed byte both ways;
#  2. the proxy's throughput: a 100 MB download through `--network allow:` against the same download
#     on the host (target: at least 0.8x);
#  3. memory per proxied connection: the supervisor's RSS with 50 idle tunnels open, against none.
# Usage: bench/network.sh path/to/agentbox
set -euo pipefail
AGENTBOX=$(readlink -f "${1:-.build/release/agentbox}")
work=$(mktemp -d /tmp/agentbox-bench-net-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"
export AGENTBOX_HOME="$work/home"
CALLS=${CALLS:-300}

# A fake upstream that answers at once: chat completions (JSON, or a 3-chunk stream), and a static
# file server for the download; an idle TCP sink for the tunnels.
cat > upstream.py <<'PY'
import json, os, socket, sys, threading
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def do_GET(self):
        size = 100 << 20
        self.send_response(200); self.send_header("Content-Length", str(size)); self.end_headers()
        chunk = b"x" * (1 << 20)
        for _ in range(size >> 20): self.wfile.write(chunk)
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if body.get("stream"):
            self.send_response(200); self.send_header("Content-Type", "text/event-stream"); self.send_header("Connection", "close"); self.end_headers()
            for c in ({"choices": [{"index": 0, "delta": {"content": "hi"}}]}, {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}):
                self.wfile.write(b"data: " + json.dumps(c).encode() + b"\n\n"); self.wfile.flush()
            if body.get("stream_options", {}).get("include_usage"):
                self.wfile.write(b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\n')
            self.wfile.write(b"data: [DONE]\n\n")
            return
        data = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}}).encode()
        self.send_response(200); self.send_header("Content-Type", "application/json"); self.send_header("Content-Length", str(len(data))); self.end_headers()
        self.wfile.write(data)
s = ThreadingHTTPServer(("127.0.0.1", 0), H)
sink = socket.socket(); sink.bind(("127.0.0.1", 0)); sink.listen(200)
held = []
threading.Thread(target=lambda: [held.append(sink.accept()) for _ in iter(int, 1)], daemon=True).start()
open(sys.argv[1] + ".tmp", "w").write(f"{s.server_address[1]} {sink.getsockname()[1]}\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
s.serve_forever()
PY
# The client: CALLS sequential calls (a new connection each, as the SDKs' first call), then the time to
# the first byte of CALLS/10 streamed calls. Prints "median_call_ms first_byte_ms".
cat > client.py <<'PY'
import http.client, json, os, statistics, sys, time
host, port, prefix, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
body = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
def call(stream):
    c = http.client.HTTPConnection(host, port)
    t = time.perf_counter()
    c.request("POST", prefix + "/chat/completions", json.dumps(dict(json.loads(body), stream=stream)),
              {"Content-Type": "application/json", "Authorization": "Bearer " + os.environ.get("OPENAI_API_KEY", "")})
    r = c.getresponse()
    first = r.read(1); t1 = time.perf_counter(); r.read(); t2 = time.perf_counter()
    assert r.status == 200, r.status
    c.close()
    return (t1 - t) * 1000, (t2 - t) * 1000
for _ in range(10): call(False)
whole = [call(False)[1] for _ in range(n)]
first = [call(True)[0] for _ in range(max(10, n // 10))]
print(f"{statistics.median(whole):.3f} {statistics.median(first):.3f}")
PY
python3 upstream.py "$work/ports" >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do [ -s "$work/ports" ] && break; sleep 0.05; done
read -r port sink < "$work/ports"
mkdir -p ws && cp client.py ws/ && cd ws

echo "agentbox: $AGENTBOX; kernel $(uname -r), $(nproc) CPUs"
echo "== 1. model gateway: $CALLS sequential calls (a new connection each), fake upstream on loopback"
direct=$(OPENAI_API_KEY=k python3 "$work/client.py" 127.0.0.1 "$port" /v1 "$CALLS")
gw=$(OPENAI_API_KEY=bench-key OPENAI_BASE_URL=http://127.0.0.1:$port/v1 "$AGENTBOX" run -- /usr/bin/python3 "$work/ws/client.py" 127.0.0.1 3129 /v1 "$CALLS")
read -r d_call d_first <<< "$direct"
read -r g_call g_first <<< "$gw"
python3 - "$d_call" "$d_first" "$g_call" "$g_first" <<'PY'
import sys
dc, df, gc, gf = map(float, sys.argv[1:])
print(f"  direct to the upstream:  {dc:7.3f} ms per call, first streamed byte {df:7.3f} ms")
print(f"  through the gateway:     {gc:7.3f} ms per call, first streamed byte {gf:7.3f} ms")
print(f"  added by the gateway:    {gc-dc:7.3f} ms per call (target < 1 ms), {gf-df:7.3f} ms to the first byte")
PY

echo "== 2. proxy throughput: 100 MB over HTTP from a loopback server, median of 7 downloads each"
dl='for i in 1 2 3 4 5 6 7; do curl -s -o /dev/null -w "%{speed_download}\n" "$0"; done'
sh -c "$dl" "http://127.0.0.1:$port/big" > "$work/direct"
"$AGENTBOX" exec --network "allow:bench.test" --add-host "bench.test:127.0.0.1" -- /bin/sh -c "$dl" "http://bench.test:$port/big" > "$work/inside"
python3 - "$work/direct" "$work/inside" <<'PY'
import statistics, sys
d, p = (statistics.median(float(x) for x in open(f).read().split()) / 1e6 for f in sys.argv[1:])
print(f"  direct on the host:   {d:8.0f} MB/s")
print(f"  through the proxy:    {p:8.0f} MB/s  ({p/d:.2f}x; target >= 0.8x)")
PY

echo "== 3. memory per proxied connection (50 idle CONNECT tunnels)"
cat > "$work/ws/tunnels.py" <<'PY'
import socket, sys, time
n, port = int(sys.argv[1]), int(sys.argv[2])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", 3128))
    s.sendall(f"CONNECT bench.test:{port} HTTP/1.1\r\nHost: bench.test:{port}\r\n\r\n".encode())
    assert b" 200 " in s.recv(100)
    socks.append(s)
print("open", flush=True)
time.sleep(3)
PY
rss() { awk '/^Rss:/ {s+=$2} END {print s}' "/proc/$1/smaps_rollup"; }
measure() {
  "$AGENTBOX" exec --network "allow:bench.test" --add-host "bench.test:127.0.0.1" -- /usr/bin/python3 "$work/ws/tunnels.py" "$1" "$sink" > "$work/t.out" &
  local p=$!
  for _ in $(seq 200); do grep -q open "$work/t.out" 2>/dev/null && break; sleep 0.02; done
  local r; r=$(rss "$p"); wait "$p"; echo "$r"
}
base=$(measure 0)
with=$(measure 50)
echo "  supervisor RSS: $base KiB idle, $with KiB with 50 tunnels: $(( (with - base) / 50 )) KiB per connection"

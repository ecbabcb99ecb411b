#!/usr/bin/env python3
"""Drives `agentbox mcp` over stdio as an MCP client does (stdlib only, run inside the sandbox by AgentsTests):
initialize, notifications/initialized, tools/list, tools/call confess with the summary in argv[1]. Prints each
answer as a JSON line, then the server's exit status once its stdin is closed. Every read has a deadline."""
import json, select, subprocess, sys, time

summary = sys.argv[1]
p = subprocess.Popen(["agentbox", "mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
buffer = b""


def answer(deadline=10):
    global buffer
    end = time.monotonic() + deadline
    while b"\n" not in buffer:
        left = end - time.monotonic()
        if left <= 0 or not select.select([p.stdout], [], [], left)[0]:
            return {"timeout": True}
        chunk = p.stdout.read1(65536)
        if not chunk:
            return {"eof": True}
        buffer += chunk
    line, buffer = buffer.split(b"\n", 1)
    return json.loads(line)


def send(message):
    p.stdin.write((json.dumps(message) + "\n").encode())
    p.stdin.flush()


send({"jsonrpc": "2.0", "id": 1, "method": "initialize",
      "params": {"protocolVersion": "2025-03-26", "capabilities": {}, "clientInfo": {"name": "mcp_driver", "version": "1"}}})
print(json.dumps(answer()), flush=True)
send({"jsonrpc": "2.0", "method": "notifications/initialized"})
send({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})
print(json.dumps(answer()), flush=True)
send({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
      "params": {"name": "confess", "arguments": {"severity": "warning", "category": "tests", "summary": summary, "details": "over MCP"}}})
print(json.dumps(answer()), flush=True)
p.stdin.close()
try:
    print(json.dumps({"exit": p.wait(10)}), flush=True)
except subprocess.TimeoutExpired:
    p.kill()
    print(json.dumps({"exit": None}), flush=True)

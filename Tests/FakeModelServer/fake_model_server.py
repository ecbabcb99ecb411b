#!/usr/bin/env python3
"""A fake model server for agentbox's own tests. Speaks OpenAI Chat Completions and Anthropic Messages
(streamed and not), plays scripted scenarios with injected faults, and checks every request it gets
(auth header, body shape, tool_use/tool_result pairing). A malformed request gets a 400 and is logged
to --violations, which the tests require to stay empty.

Base URLs: http://127.0.0.1:PORT/s/<scenario>/v1 (OpenAI) and http://127.0.0.1:PORT/s/<scenario> (Anthropic).
Agent sessions (`agentbox run`): /a/<script>/v1 and /a/<script>: the reply depends on the conversation
(the number of assistant turns so far and the last tool results), like a model that follows a plan; see
AGENT_SCRIPTS. The tool results the server receives are checked too (e.g. the API key must never be in one).
Gateway mode (real SDK clients behind `agentbox run -- CMD`): /g/<scenario>/v1 (OpenAI: POST chat/completions,
GET models) and /g/<scenario> (Anthropic: POST v1/messages) answer like the real APIs, streamed or not, with one
tool call when the request has tools and no tool result yet (then a text echoing the last tool result). The real
key must come as the provider sends it (Authorization: Bearer KEY, x-api-key: KEY); anything else is a violation
(401). A scenario is KIND or KIND.TAG (a test's own tag keeps its counters and log lines apart): ok, flaky (the
first request of the scenario gets 503), nousage (no usage anywhere), echokey (401 whose message has the full key), leakkey (a 200 answer holding the key, sent in two
writes split inside it),
slow (streams with 0.4 s between chunks),
down (every request gets 503). Each gateway request is logged to --requests as a JSON line.
Writes its port to --port-file when ready.
Usage: fake_model_server.py --key KEY --violations FILE --port-file FILE [--requests FILE]
"""
import argparse, json, sys, threading, time
from http.server import ThreadingHTTPServer, BaseHTTPRequestHandler

sys.dont_write_bytecode = True
import testserver

OPENAI_STREAM = [
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
    {"choices": [{"index": 0, "delta": {"content": "Let me look."}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "shell", "arguments": ""}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"command\":"}}]}}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"ls\"}"}}]}}]},
    {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}},
]
ANTHROPIC_STREAM = [
    ("message_start", {"type": "message_start", "message": {"id": "msg_1", "content": [], "usage": {"input_tokens": 849, "output_tokens": 1}}}),
    ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ("ping", {"type": "ping"}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Listing."}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 0}),
    ("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "shell", "input": {}}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"command\": \"ls\"}"}}),
    ("content_block_stop", {"type": "content_block_stop", "index": 1}),
    ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 47}}),
    ("message_stop", {"type": "message_stop"}),
]

counts = {}
lock = threading.Lock()


def call(name, **args):
    return {"name": name, "args": json.dumps(args)}


def script_fix(step, results, port=0):
    """Inspect, fix add.sh, check, hunt for the key and for a route to this server, confess, finish.
    Checks what the tools returned."""
    if step == 5 and ("unreachable" not in results[0][0] or "REACHED" in results[0][0]):
        return "the sandbox reached the host's loopback: " + repr(results)
    if step == 1 and "FAIL" not in results[0][0]:
        return "expected the first test run to fail, got " + repr(results)
    if step == 4 and "PASS" not in results[0][0]:
        return "expected the tests to pass after the edit, got " + repr(results)
    plan = [
        ("Running the tests first.", [call("shell", command="sh ./test.sh")]),
        ("Reading the script.", [call("read_file", path="add.sh")]),
        ("It subtracts. Fixing.", [call("edit_file", path="add.sh", old_text="$1 - $2", new_text="$1 + $2")]),
        ("Checking.", [call("shell", command="sh ./test.sh")]),
        ("Looking around.", [call("shell", command="env; tr '\\0' '\\n' < /proc/1/environ; grep -rs . /proc/*/environ | tr '\\0' ' '; ls -la / /tmp; "
                                                   "bash -c 'echo > /dev/tcp/127.0.0.1/%d' 2>/dev/null && echo REACHED || echo unreachable; echo end" % port)]),
        ("", [call("confess", severity="info", category="environment", summary="no network in the sandbox", details="checked env")]),
        ("", [call("finish", status="success", summary="fixed add.sh; tests pass")]),
    ]
    return plan[min(step, len(plan) - 1)]


def script_badargs(step, results):
    if step == 0:
        return ("Trying things.", [{"name": "shell", "args": "{\"command\": \"ls"}, call("launch_rockets", target="moon"), call("read_file"),
                                   call("shell", command=7)])
    if len(results) != 4 or not all(err for _, err in results):
        return "expected 4 error results, got " + repr(results)
    if "JSON" not in results[0][0] or "launch_rockets" not in results[1][0] or "path" not in results[2][0] or "string" not in results[3][0]:
        return "error results do not say what is wrong: " + repr(results)
    return ("", [call("finish", status="failure", summary="bad tools")])


def script_loop(step, results):
    return ("Again.", [call("shell", command="echo same")])


def script_count(step, results):
    """Thirty turns of two shell calls, each appending its own label to log.txt, then finish: a run to kill
    and resume (every label must be in the log at most once)."""
    if step >= 30:
        return ("", [call("finish", status="success", summary="counted")])
    return ("Turn %d." % step, [call("shell", command="echo %d.a >> log.txt; sleep 0.1" % step),
                                call("shell", command="echo %d.b >> log.txt; sleep 0.1" % step)])


def script_fork(step, results):
    """Three steps that build a small workspace, then one that changes a file, removes one and writes the
    workspace's own folder name (a fork's differs), then finish: a run to fork at its step 3."""
    plan = {0: "echo one > a.txt; echo draft > v.txt", 1: "echo two > b.txt; mkdir -p d; echo three > d/c.txt; chmod 0750 d",
            2: "ln -s a.txt link; echo final > v.txt",
            3: "echo changed >> a.txt; rm b.txt; basename \"$PWD\" > own.txt"}
    if step in plan:
        return ("Step %d." % step, [call("shell", command=plan[step])])
    return ("", [call("finish", status="success", summary="forked")])


def script_spin(step, results):
    return ("Step %d." % step, [call("shell", command="echo step %d" % step)])


def script_sleep(step, results):
    plan = [("Sleeping.", [call("shell", command="sleep 2; echo slept")]), ("", [call("finish", status="success", summary="slept")])]
    return plan[min(step, 1)]


def script_slow(step, results):
    time.sleep(0.3)
    plan = [("", [call("shell", command="true")]), ("", [call("shell", command="true")]), ("", [call("finish", status="success", summary="ok")])]
    return plan[min(step, 2)]


def script_idle(step, results):
    """A model that takes 20 s to answer the first call: runs that sit idle (memory benchmark)."""
    if step == 0:
        time.sleep(20)
    return ("", [call("finish", status="success", summary="idle")])


def script_big(step, results, msgs):
    """Six tool calls with 30 kB results each; then the oldest must have been shortened by agentbox and
    the whole conversation must have stayed small (AGENTBOX_CONTEXT_BYTES=60000 in the test)."""
    if step < 6:
        return ("", [call("shell", command="head -c 30000 /dev/zero | tr '\\0' a; echo %d" % step)])
    size = len(json.dumps(msgs))
    text = json.dumps(msgs[:4])
    if "elided by agentbox" not in text or size > 90000:
        return f"the conversation was not compacted: {size} bytes"
    return ("", [call("finish", status="success", summary="compacted")])


def script_ctx(step, results, msgs):
    """A model with a small context: any request over 100 kB is refused like OpenAI refuses it."""
    if len(json.dumps(msgs)) > 100000:
        return {"status": 400, "body": {"error": {"message": "This model's maximum context length is 1000 tokens", "type": "invalid_request_error", "code": "context_length_exceeded"}}}
    if step < 5:
        return ("", [call("shell", command="head -c 30000 /dev/zero | tr '\\0' b; echo %d" % step)])
    return ("", [call("finish", status="success", summary="fits")])


def script_leak(step, results):
    """The workspace has a .env with the key: reading it must not put the key into the conversation
    (the server refuses any request containing it), nor its encodings, nor the part of it the output
    cap's cut leaves at the edge of the kept head or tail (the test checks the journal for those).
    The .env is OPENAI_API_KEY=KEY\\n; the cap keeps the first and last 16384 bytes of 32 KiB."""
    plan = [("", [call("read_file", path=".env")]), ("", [call("shell", command="cat .env; echo done")]),
            ("", [call("shell", command="head -c 16359 /dev/zero | tr '\\0' a; cat .env; head -c 40000 /dev/zero | tr '\\0' b")]),
            ("", [call("shell", command="head -c 40000 /dev/zero | tr '\\0' a; cat .env; head -c 16373 /dev/zero | tr '\\0' b")]),
            ("", [call("shell", command="base64 .env; (printf x; cat .env) | base64; (printf xy; cat .env) | base64; "
                                         "od -An -tx1 .env | tr -d ' \\n'")]),
            ("", [call("finish", status="success", summary="read")])]
    return plan[min(step, len(plan) - 1)]


def script_many(step, results):
    """40 tool calls in one turn: agentbox runs 32 and answers the other 8 with errors."""
    if step == 0:
        return ("Everything at once.", [call("shell", command="echo call %d" % i) for i in range(40)])
    if len(results) != 40:
        return "expected 40 results, got %d" % len(results)
    ran = [r for r in results[:32] if not r[1] and "call " in r[0]]
    refused = [r for r in results[32:] if r[1] and "at most 32" in r[0]]
    if len(ran) != 32 or len(refused) != 8:
        return "expected 32 calls run and 8 refused: " + repr(results[30:34])
    return ("", [call("finish", status="success", summary="32 ran")])


def script_bigconfess(step, results):
    """A confession far larger than an operator's feed should hold."""
    if step == 0:
        return ("", [call("confess", severity="warning", category="c" * 300, summary="s" * 5000, details="d" * 100000)])
    return ("", [call("finish", status="success", summary="confessed")])


def script_talk(step, results):
    return ("I think the task is done.", [])


AGENT_SCRIPTS = {"fix": script_fix, "badargs": script_badargs, "loop": script_loop, "spin": script_spin, "count": script_count, "fork": script_fork, "sleep": script_sleep,
                 "slow": script_slow, "talk": script_talk, "many": script_many, "bigconfess": script_bigconfess, "idle": script_idle, "leak": script_leak}


def tool_results_openai(msgs):
    """(content, is_error) of the tool messages after the last assistant turn."""
    out = []
    for m in reversed(msgs):
        if m["role"] == "tool":
            c = m.get("content") or ""
            out.insert(0, (c, c.startswith("ERROR:")))  # OpenAI has no is_error: agentbox marks errors in the text
        else:
            break
    return out


def tool_results_anthropic(msgs):
    last = msgs[-1] if msgs else {}
    out = []
    if last.get("role") == "user" and isinstance(last.get("content"), list):
        for b in last["content"]:
            if b.get("type") == "tool_result":
                c = b.get("content", "")
                if isinstance(c, list):
                    c = "".join(x.get("text", "") for x in c)
                out.append((c, bool(b.get("is_error"))))
    return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def violation(self, message):
        with open(self.server.violations, "a") as f:
            f.write(f"{self.path}: {message}\n")
        self.answer(400, {"error": {"message": f"fake server: malformed request: {message}", "type": "invalid_request_error"}})

    def answer(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def start_stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_sse(self, raw):
        self.wfile.write(raw.encode())
        self.wfile.flush()

    def do_POST(self):
        parts = self.path.split("/")
        if len(parts) >= 4 and parts[1] == "g":
            return self.gateway(parts[2], "/" + "/".join(parts[3:]))
        if len(parts) < 4 or parts[1] not in ("s", "a"):
            return self.violation("path must be /s/<scenario>/... or /a/<script>/...")
        scenario = parts[2]
        rest = "/" + "/".join(parts[3:])
        if parts[1] == "a":
            return self.agent(scenario, rest)
        body_raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            body = json.loads(body_raw)
        except Exception as e:
            return self.violation(f"body is not JSON: {e}")
        with lock:
            counts[scenario] = counts.get(scenario, 0) + 1
            attempt = counts[scenario]
        if rest == "/v1/chat/completions":
            return self.openai(scenario, attempt, body)
        if rest == "/v1/messages":
            return self.anthropic(scenario, attempt, body)
        return self.violation(f"unknown endpoint {rest}")

    def do_GET(self):
        parts = self.path.split("/")
        if len(parts) >= 4 and parts[1] == "g":
            return self.gateway(parts[2], "/" + "/".join(parts[3:]))
        return self.violation("GET is only served in gateway mode (/g/<scenario>/v1/models)")

    # --- gateway mode: what real SDK clients expect of the real APIs
    def gateway(self, scenario, rest):
        kind = scenario.split(".")[0]
        openai = rest.startswith("/v1/chat/completions") or rest.startswith("/v1/models")
        body = {}
        if self.command == "POST":
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                body = json.loads(raw)
            except Exception as e:
                return self.violation(f"body is not JSON: {e}")
        with lock:
            counts["g:" + scenario] = counts.get("g:" + scenario, 0) + 1
            attempt = counts["g:" + scenario]
        stream = body.get("stream") is True
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        msgs = body.get("messages") or []
        if openai:
            auth_ok = self.headers.get("Authorization") == f"Bearer {self.server.key}"
            wrong = [h for h in ("x-api-key",) if self.headers.get(h) is not None]
        else:
            auth_ok = self.headers.get("x-api-key") == self.server.key
            wrong = [h for h in ("Authorization",) if self.headers.get(h) is not None]
        placeholder = any("agentbox-gateway-placeholder" in v for v in self.headers.values())
        entry = {"scenario": scenario, "kind": kind, "method": self.command, "path": rest, "attempt": attempt, "model": body.get("model"),
                 "stream": stream, "include_usage": include_usage, "stream_options": "stream_options" in body, "auth_ok": auth_ok,
                 "auth_header": "authorization" if openai else "x-api-key", "other_auth_headers": wrong, "placeholder": placeholder,
                 "tools": bool(body.get("tools")), "messages": len(msgs), "status": 200, "usage": None}

        def log(**more):
            entry.update(more)
            if self.server.requests:
                with lock, open(self.server.requests, "a") as f:
                    f.write(json.dumps(entry) + "\n")

        def error(status, message, type_):
            log(status=status)
            if openai:
                return self.answer(status, {"error": {"message": message, "type": type_, "param": None, "code": type_}})
            return self.answer(status, {"type": "error", "error": {"type": type_, "message": message}})

        if not auth_ok or wrong or placeholder:
            with open(self.server.violations, "a") as f:
                f.write(f"{self.path}: gateway request without the real key as the provider takes it "
                        f"(auth_ok={auth_ok}, other auth headers {wrong}, placeholder={placeholder})\n")
            return error(401, "fake server: missing or wrong API key", "authentication_error")
        if not openai and not self.headers.get("anthropic-version"):
            with open(self.server.violations, "a") as f:
                f.write(f"{self.path}: no anthropic-version header\n")
            return error(400, "fake server: anthropic-version header is required", "invalid_request_error")
        if rest.startswith("/v1/models"):
            if self.command != "GET":
                return error(405, "fake server: GET only", "invalid_request_error")
            log()
            return self.answer(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "fake"}]})
        if rest not in ("/v1/chat/completions", "/v1/messages"):
            return self.violation(f"unknown gateway endpoint {rest}")
        if "model" not in body or not msgs:
            return self.violation("missing model or messages")
        if not openai and "max_tokens" not in body:
            return self.violation("missing max_tokens")
        if kind == "down":
            return error(503, "fake server: down", "overloaded_error" if not openai else "server_error")
        if kind == "flaky" and attempt == 1:
            return error(503, "fake server: temporarily unavailable", "overloaded_error" if not openai else "server_error")
        if kind == "echokey":
            if openai:
                return error(401, f"Incorrect API key provided: {self.server.key}. You can find your API key at https://platform.openai.com/account/api-keys.", "invalid_api_key")
            return error(401, f"invalid x-api-key: {self.server.key}", "authentication_error")
        if kind == "leakkey" and openai and not stream:
            # A successful answer that holds the key, written in two sends split inside the key (the
            # gateway must redact it across its chunk boundary).
            data = json.dumps({"id": "chatcmpl-fake", "object": "chat.completion", "model": body["model"],
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": f"the key is {self.server.key}!"},
                                            "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}).encode()
            cut = data.index(self.server.key.encode()) + len(self.server.key) // 2
            log(usage={"prompt_tokens": 3, "completion_tokens": 5}, tool_call=False)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:cut]); self.wfile.flush()
            time.sleep(0.2)
            self.wfile.write(data[cut:]); self.wfile.flush()
            return
        delay = 0.4 if kind == "slow" else 0

        # The answer: one tool call when there are tools and no tool result yet, else text.
        if openai:
            results = [m.get("content") for m in msgs if m.get("role") == "tool"]
        else:
            results = [b.get("content") for m in msgs if isinstance(m.get("content"), list)
                       for b in m["content"] if isinstance(b, dict) and b.get("type") == "tool_result"]
        results = ["".join(x.get("text", "") for x in r) if isinstance(r, list) else (r or "") for r in results]
        call_tool = bool(body.get("tools")) and not results
        tool_name = (body["tools"][0].get("function") or {}).get("name") if openai and call_tool else (body["tools"][0].get("name") if call_tool else None)
        tool_args = json.dumps({"city": "Paris"})
        text = ("The tool said: " + results[-1]) if results else ("Hello from the fake " + ("OpenAI" if openai else "Anthropic") + " upstream.")
        pieces = [text[:len(text) // 2], text[len(text) // 2:]]
        # Usage as the provider counts it (deterministic; logged so that tests compare).
        prompt = 10 + 2 * len(msgs)
        completion = 9 if call_tool else 7
        usage = None
        if kind != "nousage":
            usage = ({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion} if openai
                     else {"input_tokens": prompt, "output_tokens": completion})
        # In a stream, OpenAI sends usage only when asked (stream_options.include_usage).
        sent_usage = usage if (not stream or not openai or include_usage) else None
        log(usage=sent_usage, tool_call=call_tool)
        if openai:
            return self.gateway_openai(body, stream, include_usage, call_tool, tool_name, tool_args, text, pieces, usage, delay)
        return self.gateway_anthropic(body, stream, call_tool, tool_name, tool_args, text, pieces, usage, delay)

    def gateway_openai(self, body, stream, include_usage, call_tool, tool_name, tool_args, text, pieces, usage, delay):
        base = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": body["model"]}
        if not stream:
            if call_tool:
                msg = {"role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_fake_1", "type": "function", "function": {"name": tool_name, "arguments": tool_args}}]}
            else:
                msg = {"role": "assistant", "content": text}
            out = dict(base, choices=[{"index": 0, "message": msg, "logprobs": None, "finish_reason": "tool_calls" if call_tool else "stop"}])
            if usage:
                out["usage"] = usage
            return self.answer(200, out)
        base["object"] = "chat.completion.chunk"
        extra = {"usage": None} if include_usage else {}
        def chunk(delta, finish=None):
            self.send_sse("data: " + json.dumps(dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}], **extra)) + "\n\n")
            if delay:
                time.sleep(delay)
        self.start_stream()
        chunk({"role": "assistant", "content": ""})
        if call_tool:
            chunk({"tool_calls": [{"index": 0, "id": "call_fake_1", "type": "function", "function": {"name": tool_name, "arguments": ""}}]})
            for piece in (tool_args[:5], tool_args[5:]):
                chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            chunk({}, "tool_calls")
        else:
            for piece in pieces:
                chunk({"content": piece})
            chunk({}, "stop")
        if include_usage and usage:
            self.send_sse("data: " + json.dumps(dict(base, choices=[], usage=usage)) + "\n\n")
        self.send_sse("data: [DONE]\n\n")

    def gateway_anthropic(self, body, stream, call_tool, tool_name, tool_args, text, pieces, usage, delay):
        stop = "tool_use" if call_tool else "end_turn"
        u = usage or {}
        if not stream:
            content = ([{"type": "tool_use", "id": "toolu_fake_1", "name": tool_name, "input": json.loads(tool_args)}] if call_tool
                       else [{"type": "text", "text": text}])
            out = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"], "content": content,
                   "stop_reason": stop, "stop_sequence": None}
            if usage:
                out["usage"] = usage
            return self.answer(200, out)
        def ev(name, data):
            self.send_sse(f"event: {name}\ndata: " + json.dumps(dict(type=name, **data)) + "\n\n")
            if delay:
                time.sleep(delay)
        self.start_stream()
        start = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"], "content": [], "stop_reason": None,
                 "stop_sequence": None}
        if usage:
            start["usage"] = {"input_tokens": u["input_tokens"], "output_tokens": 1}
        ev("message_start", {"message": start})
        if call_tool:
            ev("content_block_start", {"index": 0, "content_block": {"type": "tool_use", "id": "toolu_fake_1", "name": tool_name, "input": {}}})
            for piece in (tool_args[:5], tool_args[5:]):
                ev("content_block_delta", {"index": 0, "delta": {"type": "input_json_delta", "partial_json": piece}})
        else:
            ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
            ev("ping", {})
            for piece in pieces:
                ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        ev("content_block_stop", {"index": 0})
        delta = {"delta": {"stop_reason": stop, "stop_sequence": None}}
        if usage:
            delta["usage"] = {"output_tokens": u["output_tokens"]}
        ev("message_delta", delta)
        ev("message_stop", {})

    # --- agent sessions
    def agent(self, script, rest):
        body_raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = json.loads(body_raw)
        openai = rest == "/v1/chat/completions"
        if openai and self.headers.get("Authorization") != f"Bearer {self.server.key}":
            return self.violation("bad Authorization header")
        if not openai and self.headers.get("x-api-key") != self.server.key:
            return self.violation("bad x-api-key header")
        msgs = body["messages"]
        if self.server.key in json.dumps(msgs):
            return self.violation("the API key appears in the conversation (a tool saw it)")
        step = sum(1 for m in msgs if m["role"] == "assistant")
        results = tool_results_openai(msgs) if openai else tool_results_anthropic(msgs)
        if openai:
            for i, m in enumerate(msgs):
                ids = [c["id"] for c in m.get("tool_calls") or []]
                if ids:
                    answered = [x.get("tool_call_id") for x in msgs[i + 1:i + 1 + len(ids)] if x["role"] == "tool"]
                    if answered != ids:
                        return self.violation(f"tool calls {ids} answered by {answered}")
        else:
            names = [t["name"] for t in body.get("tools", [])]
            if sorted(names) != sorted(["shell", "read_file", "write_file", "edit_file", "confess", "finish"]):
                return self.violation(f"unexpected tools {names}")
        if script == "fix":
            turn = script_fix(step, results, self.server.server_address[1])
        elif script in ("big", "ctx"):
            turn = (script_big if script == "big" else script_ctx)(step, results, msgs)
            if isinstance(turn, dict):
                return self.answer(turn["status"], turn["body"])
        else:
            turn = AGENT_SCRIPTS[script](step, results)
        if isinstance(turn, str):
            return self.violation(turn)
        text, calls = turn
        self.start_stream()
        if openai:
            self.send_sse("data: " + json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}) + "\n\n")
            if text:
                self.send_sse("data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": text}}]}) + "\n\n")
            for i, c in enumerate(calls):
                first = {"index": i, "id": f"call_{step}_{i}", "type": "function", "function": {"name": c["name"], "arguments": ""}}
                self.send_sse("data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]}) + "\n\n")
                a = c["args"]
                for piece in (a[:len(a) // 2], a[len(a) // 2:]):
                    d = {"index": i, "function": {"arguments": piece}}
                    self.send_sse("data: " + json.dumps({"choices": [{"index": 0, "delta": {"tool_calls": [d]}}]}) + "\n\n")
            reason = "tool_calls" if calls else "stop"
            self.send_sse("data: " + json.dumps({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}) + "\n\n")
            self.send_sse("data: " + json.dumps({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 100}}) + "\n\n")
            self.send_sse("data: [DONE]\n\n")
        else:
            ev = lambda name, data: self.send_sse(f"event: {name}\ndata: " + json.dumps(dict(type=name, **data)) + "\n\n")
            ev("message_start", {"message": {"id": f"msg_{step}", "content": [], "usage": {"input_tokens": 1000, "output_tokens": 1}}})
            index = 0
            if text:
                ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
                ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": text}})
                ev("content_block_stop", {"index": 0})
                index = 1
            for i, c in enumerate(calls):
                ev("content_block_start", {"index": index, "content_block": {"type": "tool_use", "id": f"toolu_{step}_{i}", "name": c["name"], "input": {}}})
                a = c["args"]
                for piece in (a[:len(a) // 2], a[len(a) // 2:]):
                    ev("content_block_delta", {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}})
                ev("content_block_stop", {"index": index})
                index += 1
            ev("message_delta", {"delta": {"stop_reason": "tool_use" if calls else "end_turn"}, "usage": {"output_tokens": 100}})
            ev("message_stop", {})

    # --- OpenAI
    def openai(self, scenario, attempt, body):
        if scenario == "auth":
            return self.answer(401, {"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}})
        if self.headers.get("Authorization") != f"Bearer {self.server.key}":
            return self.violation(f"Authorization header is {self.headers.get('Authorization')!r}")
        for key in ("model", "messages"):
            if key not in body:
                return self.violation(f"missing {key}")
        if body.get("stream") is not True or body.get("stream_options", {}).get("include_usage") is not True:
            return self.violation("stream and stream_options.include_usage must be true")
        names = [t["function"]["name"] for t in body.get("tools", [])]
        if names and sorted(names) != sorted(["shell", "read_file", "write_file", "edit_file", "confess", "finish"]):
            return self.violation(f"unexpected tools {names}")
        if scenario == "quota":
            return self.answer(429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}})
        if scenario == "429" and attempt == 1:
            return self.answer(429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}}, {"retry-after-ms": "300"})
        if scenario == "500" and attempt == 1:
            return self.answer(500, {"error": {"message": "The server had an error", "type": "server_error"}})
        chunks = list(OPENAI_STREAM)
        if scenario == "badargs":
            chunks[4] = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"ls"}}]}}]}
        if scenario == "reuse":
            chunks[2:5] = [
                {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "a", "function": {"name": "read_file", "arguments": "{\"path\":\"x\"}"}}]}}]},
                {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "b", "function": {"name": "read_file", "arguments": "{\"path\":\"y\"}"}}]}}]},
            ]
        if scenario in ("flood", "floodline", "floodjson"):
            # 64 MiB: text deltas without end, one SSE line that never ends, or one JSON body.
            if scenario == "floodjson":
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "')
                piece = b"x" * 65536
                for _ in range(1024):
                    self.wfile.write(piece)
                return
            self.start_stream()
            piece = "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "y" * 65000}}]}) + "\n\n"
            if scenario == "floodline":
                self.send_sse("data: {\"choices\": [{\"index\": 0, \"delta\": {\"content\": \"")
                piece = "z" * 65536
            try:
                for _ in range(1024):
                    self.send_sse(piece)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if scenario == "nostream":
            msg = {"role": "assistant", "content": "plain", "tool_calls": []}
            return self.answer(200, {"choices": [{"index": 0, "message": msg, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1}})
        if scenario == "choicesplain":
            # n > 1: only the choice with index 0 is the answer, wherever it is in the array.
            other = {"index": 1, "message": {"role": "assistant", "content": "the other choice", "tool_calls": None}, "finish_reason": "length"}
            first = {"index": 0, "message": {"role": "assistant", "content": "plain", "tool_calls": None}, "finish_reason": "stop"}
            return self.answer(200, {"choices": [other, first], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
        if scenario == "refusalplain":
            msg = {"role": "assistant", "content": None, "refusal": "I can't help with that.", "tool_calls": None}
            return self.answer(200, {"choices": [{"index": 0, "message": msg, "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 5}})
        if scenario == "refusal":
            # A refusal as OpenAI streams it: refusal deltas, no content, finish_reason stop.
            chunks = [
                {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "refusal": ""}, "finish_reason": None}]},
                {"choices": [{"index": 0, "delta": {"refusal": "I'm sorry, "}}]},
                {"choices": [{"index": 0, "delta": {"refusal": "I can't help with that."}}]},
                {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                {"choices": [], "usage": {"prompt_tokens": 50, "completion_tokens": 9, "total_tokens": 59}},
            ]
        if scenario == "choices":
            # Every chunk also carries choice 1 (sent first), which must be ignored.
            def other(chunk):
                if not chunk["choices"]:
                    return chunk
                extra = {"index": 1, "delta": {"content": "WRONG", "tool_calls": [{"index": 0, "id": "call_x", "type": "function",
                                                                                    "function": {"name": "finish", "arguments": "{}"}}]},
                         "finish_reason": "length"}
                return dict(chunk, choices=[extra] + chunk["choices"])
            chunks = [other(c) for c in chunks]
        if scenario == "noblank":
            # The last event ends the body without its blank line (and without [DONE]).
            self.start_stream()
            for chunk in chunks[:-2]:
                self.send_sse("data: " + json.dumps(chunk) + "\n\n")
            last = dict(chunks[-2], usage=chunks[-1]["usage"])
            self.send_sse("data: " + json.dumps(last))
            return
        self.start_stream()
        self.send_sse(": keep-alive\r\n\r\n")
        for i, chunk in enumerate(chunks):
            if scenario == "cut" and attempt == 1 and i == 4:
                return  # the connection closes mid tool call
            if scenario == "stall" and attempt == 1 and i == 3:
                time.sleep(3)
                return
            self.send_sse("data: " + json.dumps(chunk) + "\r\n\r\n")
        self.send_sse("data: [DONE]\n\n")

    # --- Anthropic
    def anthropic(self, scenario, attempt, body):
        if self.headers.get("x-api-key") != self.server.key:
            return self.violation(f"x-api-key header is {self.headers.get('x-api-key')!r}")
        if self.headers.get("anthropic-version") != "2023-06-01":
            return self.violation("anthropic-version must be 2023-06-01")
        for key in ("model", "max_tokens", "messages"):
            if key not in body:
                return self.violation(f"missing {key}")
        msgs = body["messages"]
        for i, m in enumerate(msgs):
            if m["role"] == "assistant" and isinstance(m["content"], list):
                uses = [b["id"] for b in m["content"] if b.get("type") == "tool_use"]
                if uses:
                    nxt = msgs[i + 1] if i + 1 < len(msgs) else None
                    results = [b.get("tool_use_id") for b in (nxt or {}).get("content", []) if isinstance(b, dict) and b.get("type") == "tool_result"]
                    if sorted(results) != sorted(uses):
                        return self.answer(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "tool_use ids were found without tool_result blocks immediately after"}})
        if scenario == "529" and attempt == 1:
            return self.answer(529, {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        self.start_stream()
        for i, (name, data) in enumerate(ANTHROPIC_STREAM):
            if scenario == "errorevent" and attempt == 1 and i == 3:
                self.send_sse("event: error\ndata: " + json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}) + "\n\n")
                return
            if scenario == "errorlast" and attempt == 1 and i == 3:
                # An error event that ends the body without its blank line.
                self.send_sse("event: error\ndata: " + json.dumps({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
                return
            if scenario == "noblank" and i == len(ANTHROPIC_STREAM) - 1:
                self.send_sse(f"event: {name}\ndata: " + json.dumps(data) + "\n")  # one line end, not two
                return
            self.send_sse(f"event: {name}\ndata: " + json.dumps(data) + "\n\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--violations", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    ap.add_argument("--tls-key")
    ap.add_argument("--requests", help="gateway mode: log each request to this file as a JSON line")
    args = ap.parse_args()
    testserver.die_with_parent()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    server.key = args.key
    server.violations = args.violations
    server.requests = args.requests
    testserver.announce_port(server.server_address[1], args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A bring-your-own agent using the real openai SDK (run inside the sandbox by AgentsTests). Does the calls
named in argv, in order, and prints one JSON line per call: what the SDK gave back (text, tool call, usage,
whether a usage-only chunk arrived) or the error it raised. First it prints the key variables it sees and
whether the real key (known by --key-sha256 and --key-length only) is anywhere in its environment.

Calls: plain, stream (no stream_options), stream_usage (include_usage), tools (a tool round trip, not
streamed), stream_tools (the same, streamed), models (GET /v1/models)."""
import json, os, sys, time

sys.dont_write_bytecode = True  # no __pycache__ in the repo or the workspace
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keyscan
import openai

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
                                             "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
MODEL = "gpt-4o-mini"


def usage_of(u):
    return None if u is None else {"prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


def streamed(client, messages, **kw):
    """text, tool calls, usage, whether a usage chunk came, seconds between the first and the last chunk."""
    text, calls, usage, usage_chunk, times = "", {}, None, False, []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, stream=True, **kw):
        times.append(time.monotonic())
        if chunk.usage is not None:
            usage_chunk = True
            usage = usage_of(chunk.usage)
        for choice in chunk.choices:
            text += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                c["id"] += tc.id or ""
                if tc.function:
                    c["name"] += tc.function.name or ""
                    c["arguments"] += tc.function.arguments or ""
    return text, [calls[i] for i in sorted(calls)], usage, usage_chunk, (times[-1] - times[0]) if times else 0, len(times)


def do(client, name):
    user = [{"role": "user", "content": "What is the weather in Paris?"}]
    if name == "plain":
        r = client.chat.completions.create(model=MODEL, messages=user)
        return {"text": r.choices[0].message.content, "usage": usage_of(r.usage)}
    if name in ("stream", "stream_usage"):
        kw = {"stream_options": {"include_usage": True}} if name == "stream_usage" else {}
        text, _, usage, usage_chunk, spread, n = streamed(client, user, **kw)
        return {"text": text, "usage": usage, "usage_chunk": usage_chunk, "spread": round(spread, 3), "chunks": n}
    if name == "tools":
        r = client.chat.completions.create(model=MODEL, messages=user, tools=TOOLS)
        tc = r.choices[0].message.tool_calls[0]
        messages = user + [r.choices[0].message.model_dump(exclude_none=True),
                           {"role": "tool", "tool_call_id": tc.id, "content": "sunny, 21 C"}]
        r2 = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
        return {"tool": tc.function.name, "arguments": json.loads(tc.function.arguments), "text": r2.choices[0].message.content,
                "usage": [usage_of(r.usage), usage_of(r2.usage)]}
    if name == "stream_tools":
        _, calls, _, chunk1, _, _ = streamed(client, user, tools=TOOLS)
        c = calls[0]
        messages = user + [{"role": "assistant", "tool_calls": [{"id": c["id"], "type": "function",
                                                                 "function": {"name": c["name"], "arguments": c["arguments"]}}]},
                           {"role": "tool", "tool_call_id": c["id"], "content": "rain, 12 C"}]
        text, _, _, chunk2, _, _ = streamed(client, messages, tools=TOOLS)
        return {"tool": c["name"], "arguments": json.loads(c["arguments"]), "text": text, "usage_chunk": chunk1 or chunk2}
    if name == "models":
        return {"models": [m.id for m in client.models.list()]}
    raise SystemExit(f"unknown call {name}")


def main():
    keyscan.run_calls(openai, openai.OpenAI, do)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A bring-your-own agent using the real anthropic SDK (run inside the sandbox by AgentsTests). Does the calls
named in argv, in order, and prints one JSON line per call (text, tool call, usage, or the error the SDK
raised). First it prints the key variables it sees and whether the real key (known by --key-sha256 and
--key-length only) is anywhere in its environment.

Calls: plain, stream (messages.stream), tools (a tool round trip, not streamed), stream_tools (streamed)."""
import os, sys

sys.dont_write_bytecode = True  # no __pycache__ in the repo or the workspace
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keyscan
import anthropic

TOOLS = [{"name": "get_weather", "description": "The weather in a city",
          "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
MODEL = "claude-test"


def usage_of(u):
    return None if u is None else {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}


def text_of(m):
    return "".join(b.text for b in m.content if b.type == "text")


def do(client, name):
    user = [{"role": "user", "content": "What is the weather in Paris?"}]
    if name == "plain":
        m = client.messages.create(model=MODEL, max_tokens=100, messages=user)
        return {"text": text_of(m), "usage": usage_of(m.usage)}
    if name == "stream":
        with client.messages.stream(model=MODEL, max_tokens=100, messages=user) as s:
            text = "".join(s.text_stream)
            m = s.get_final_message()
        return {"text": text, "usage": usage_of(m.usage)}
    if name in ("tools", "stream_tools"):
        def create(messages):
            if name == "tools":
                return client.messages.create(model=MODEL, max_tokens=100, messages=messages, tools=TOOLS)
            with client.messages.stream(model=MODEL, max_tokens=100, messages=messages, tools=TOOLS) as s:
                return s.get_final_message()
        m = create(user)
        use = next(b for b in m.content if b.type == "tool_use")
        messages = user + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in m.content]},
                           {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21 C"}]}]
        m2 = create(messages)
        return {"tool": use.name, "arguments": use.input, "text": text_of(m2), "usage": [usage_of(m.usage), usage_of(m2.usage)]}
    raise SystemExit(f"unknown call {name}")


def main():
    keyscan.run_calls(anthropic, anthropic.Anthropic, do)


if __name__ == "__main__":
    main()

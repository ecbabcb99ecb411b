"""Looks for the real API key where a program inside the sandbox could see it, knowing only its sha256 and
length (the key itself is never given to the sandbox): every window of that length in the environment, in
/proc/self/environ, and in the environ and cmdline of every process it can read."""
import hashlib, os


def scan(sha256, length):
    if not sha256 or length <= 0:
        return {"key_scan": "skipped"}
    target = bytes.fromhex(sha256)
    places = []
    sources = {"os.environ": "\0".join(f"{k}={v}" for k, v in os.environ.items()).encode()}
    for pid in ["self"] + [d for d in os.listdir("/proc") if d.isdigit()]:
        for name in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    sources[f"/proc/{pid}/{name}"] = f.read()
            except OSError:
                pass
    for where, data in sources.items():
        for i in range(0, len(data) - length + 1):
            if hashlib.sha256(data[i:i + length]).digest() == target:
                places.append(where)
                break
    return {"key_scan": "found" if places else "not found", "key_places": places, "scanned": len(sources)}


def run_calls(sdk, client, do):
    """The client programs' main: their arguments, the key scan line, then each named call's JSON line
    (what `do(client, name)` returned, or the error `sdk` raised)."""
    import argparse, json
    ap = argparse.ArgumentParser()
    ap.add_argument("--key-sha256", default="")
    ap.add_argument("--key-length", type=int, default=0)
    ap.add_argument("calls", nargs="*")
    args = ap.parse_args()
    seen = {k: os.environ.get(k) for k in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL")}
    print(json.dumps(dict({"env": seen}, **scan(args.key_sha256, args.key_length))), flush=True)
    client = client()
    for name in args.calls:
        try:
            out = dict({"call": name, "ok": True}, **do(client, name))
        except sdk.APIStatusError as e:
            out = {"call": name, "ok": False, "error": type(e).__name__, "status": e.status_code, "message": str(e)}
        except sdk.APIError as e:
            out = {"call": name, "ok": False, "error": type(e).__name__, "message": str(e)}
        print(json.dumps(out), flush=True)

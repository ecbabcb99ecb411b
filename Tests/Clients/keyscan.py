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

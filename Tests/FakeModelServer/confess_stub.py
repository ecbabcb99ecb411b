#!/usr/bin/env python3
"""A stand-in for the agentbox service's confess endpoint, for the tests of the in-sandbox client.

Records every request it receives as one JSON line in --requests (method, path, the headers that
matter, the body as JSON, or as text when it is not JSON) and answers:
  POST /agentbox/v1/confess, summary "fail": 409 {"error":{"message":...}} (with an ESC in it);
  summary "huge": 200 with a body of 2 MiB;
  otherwise: 200 {"ok":true,"seq":7}.
Writes its port to --port-file when ready, and exits when the process that started it is gone (a test
run keeps it in a static and never stops it).
Usage: confess_stub.py --requests FILE --port-file FILE
"""
import argparse
import json
import http.server
import sys

sys.dont_write_bytecode = True  # no __pycache__ next to the script
import testserver  # noqa: E402

FAIL_MESSAGE = "the confession feed is full \x1b[31mred\x1b[0m"


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = raw.decode("utf-8", "replace")
        record = {"method": "POST", "path": self.path, "version": self.request_version,
                  "host": self.headers.get("Host"), "content_type": self.headers.get("Content-Type"),
                  "connection": self.headers.get("Connection"), "content_length": length, "body": body}
        with open(self.server.requests, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.path != "/agentbox/v1/confess":
            return self.answer(404, {"error": {"message": "no such endpoint"}})
        summary = body.get("summary") if isinstance(body, dict) else None
        if summary == "fail":
            return self.answer(409, {"error": {"message": FAIL_MESSAGE}})
        if summary == "huge":
            return self.answer(200, b"{\"ok\":true,\"seq\":7,\"pad\":\"" + b"x" * (2 << 20) + b"\"}")
        self.answer(200, {"ok": True, "seq": 7})

    def do_GET(self):
        self.answer(405, {"error": {"message": "POST only"}})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.requests = args.requests
    testserver.die_with_parent()
    testserver.announce_port(server.server_address[1], args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()

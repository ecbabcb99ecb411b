#!/usr/bin/env python3
"""Serves a directory over HTTP on 127.0.0.1 (a free port, written to --port-file) for the network
tests: the "allowed host" and the local package index that pip installs from through agentbox's proxy.
With --make-index NAME, first writes a PEP 503 index with one pure-Python wheel of NAME (version 1.0,
module NAME_mod with VALUE = 42) under DIR/simple/NAME/."""
import argparse, base64, hashlib, http.server, os, socketserver, sys, zipfile

sys.dont_write_bytecode = True
import testserver


def make_wheel(root, name):
    dist = name.replace("-", "_")
    wheel = f"{dist}-1.0-py3-none-any.whl"
    files = {
        f"{dist}_mod.py": b"VALUE = 42\n",
        f"{dist}-1.0.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: agentbox-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}-1.0.dist-info/RECORD,,")
    files[f"{dist}-1.0.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    pkgdir = os.path.join(root, "simple", name)
    os.makedirs(pkgdir, exist_ok=True)
    with zipfile.ZipFile(os.path.join(pkgdir, wheel), "w") as z:
        for path, data in files.items():
            z.writestr(path, data)
    with open(os.path.join(pkgdir, "index.html"), "w") as f:
        f.write(f'<!DOCTYPE html><html><body><a href="{wheel}">{wheel}</a></body></html>\n')
    with open(os.path.join(root, "simple", "index.html"), "w") as f:
        f.write(f'<!DOCTYPE html><html><body><a href="{name}/">{name}</a></body></html>\n')


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--port-file", required=True)
    p.add_argument("--make-index")
    a = p.parse_args()
    # The folder it serves was made by the test process for it alone: it goes with it.
    testserver.die_with_parent(remove=(a.dir, a.port_file, a.port_file + ".tmp"))
    if a.make_index:
        make_wheel(a.dir, a.make_index)
    os.chdir(a.dir)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), Quiet)
    testserver.announce_port(server.server_address[1], a.port_file)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

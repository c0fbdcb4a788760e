#!/usr/bin/env python3
"""A loopback webhook receiver for the bench: answers 200 to every POST at once and counts
deliveries with their arrival times; GET /stats returns {"count", "first", "last"} (Unix seconds).
Bounded: it exits by itself after --lifetime-secs."""
import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
stats = {"count": 0, "first": None, "last": None}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        now = time.time()
        with lock:
            stats["count"] += 1
            stats["first"] = stats["first"] or now
            stats["last"] = now
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self):  # noqa: N802
        with lock:
            body = json.dumps(stats).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lifetime-secs", type=float, default=600)
    a = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    threading.Timer(a.lifetime_secs, server.shutdown).start()
    print(f"receiver listening on http://127.0.0.1:{a.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Capsule proxy benchmark: a request to a port inside a capsule through the control
plane's proxy (`http://{port}-{id}.localhost:PORT/…`) against the same request sent
straight to the host agent's port proxy (`http://AGENT/proxy/{id}/{port}/…`).

    cargo build --release -p wrenn --bin wrenn
    scripts/bench-proxy.py [--binary target/release/wrenn] [--requests 2000]
                           [--clients 8] [--seconds 10] [--body-kib 64]

Starts `wrenn dev` in a temporary directory on a free loopback port, creates a capsule
running a small keep-alive HTTP server (Python's, threaded, HTTP/1.1) on port 8000, and
reports for both paths:
  - latency of sequential GETs of a small body on one keep-alive connection (p50, p99),
    and the proxy's overhead (proxied p50 - direct p50), target < 1 ms;
  - throughput: `--clients` keep-alive clients for `--seconds` each way, requests/s and
    MiB/s for a `--body-kib` body, and the ratio proxied/direct, target >= 80 %.
The agent's address is read from the dev database (hosts.address). Loopback only.
Standard library only.
"""

import argparse
import http.client
import json
import os
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import urllib.request


def pct(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


SERVER = r'''
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
big = b"x" * (int(sys.argv[1]) * 1024)
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response, no Nagle: the app must not be what is measured.
    wbufsize = 1 << 20
    disable_nagle_algorithm = True
    def do_GET(self):
        body = big if self.path == "/big" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", 8000), H).serve_forever()
'''


class Path:
    """One way to reach the capsule's port 8000: (address, host header, path prefix)."""

    def __init__(self, name, port, host, prefix, key=None):
        self.name, self.port, self.host, self.prefix, self.key = name, port, host, prefix, key

    def conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)

    def get(self, c, path):
        headers = {"Host": self.host}
        if self.key:
            headers["X-API-Key"] = self.key
        c.request("GET", self.prefix + path, headers=headers)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"{self.name}: {r.status} {body[:200]!r}")
        return len(body)


def latency(path, n):
    c = path.conn()
    for _ in range(50):
        path.get(c, "/small")
    ms = []
    for _ in range(n):
        t = time.perf_counter()
        path.get(c, "/small")
        ms.append((time.perf_counter() - t) * 1000)
    c.close()
    return ms


def throughput(path, clients, seconds, route):
    stop = time.monotonic() + seconds
    counts = [0] * clients
    sizes = [0] * clients

    def run(i):
        c = path.conn()
        while time.monotonic() < stop:
            sizes[i] += path.get(c, route)
            counts[i] += 1
        c.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    return sum(counts) / elapsed, sum(sizes) / elapsed / (1 << 20)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default="target/release/wrenn")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--body-kib", type=int, default=64)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="wrenn-bench-proxy-")
    port = free_port()
    proc = subprocess.Popen(
        [args.binary, "dev", "--dir", f"{tmp}/state", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "error",
             # No shipped-template build in the background while measuring.
             "WRENN_DEV_BUILD_TEMPLATES": "0",
             "WRENN_IMAGE_CACHE": os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/wrenn/test-images")})
    key = None
    for line in proc.stdout:
        if line.startswith("export WRENN_API_KEY="):
            key = line.strip().split("=", 1)[1]
            break
    try:
        def api(method, path, body=None):
            req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                         data=json.dumps(body).encode() if body is not None else None,
                                         headers={"X-API-Key": key, "Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"null")

        cid = api("POST", "/v1/capsules", {})["id"]
        while api("GET", f"/v1/capsules/{cid}")["status"] != "running":
            time.sleep(0.05)
        api("POST", f"/v1/capsules/{cid}/exec",
            {"cmd": "/bin/sh", "args": ["-c", f"cat > /tmp/bench_server.py <<'PY'\n{SERVER}\nPY"]})
        api("POST", f"/v1/capsules/{cid}/exec",
            {"cmd": "python3", "args": ["/tmp/bench_server.py", str(args.body_kib)], "background": True})
        agent = sqlite3.connect(f"{tmp}/state/wrenn.db").execute(
            "SELECT address FROM hosts WHERE address <> '' LIMIT 1").fetchone()[0]
        agent_port = int(agent.rsplit(":", 1)[1])
        proxied = Path("proxied", port, f"8000-{cid}.localhost:{port}", "", key)
        direct = Path("direct", agent_port, agent, f"/proxy/{cid}/8000")
        for _ in range(200):
            try:
                proxied.get(proxied.conn(), "/small")
                break
            except (RuntimeError, OSError):
                time.sleep(0.1)

        print(f"latency: {args.requests} sequential GETs on one keep-alive connection")
        p50 = {}
        for path in (direct, proxied, direct, proxied):
            ms = latency(path, args.requests)
            p50.setdefault(path.name, []).append(pct(ms, 50))
            print(f"  {path.name:8s} p50={pct(ms, 50):6.3f} ms  p99={pct(ms, 99):6.3f} ms")
        d, p = min(p50["direct"]), min(p50["proxied"])
        print(f"  proxy overhead (best p50s): {p - d:+.3f} ms  (target < 1 ms)")

        print(f"throughput: {args.clients} keep-alive clients, {args.seconds:.0f} s each")
        rates = {}
        for route, what in (("/small", "small body"), ("/big", f"{args.body_kib} KiB body")):
            for path in (direct, proxied):
                rps, mib = throughput(path, args.clients, args.seconds, route)
                rates[(route, path.name)] = rps
                print(f"  {what:12s} {path.name:8s} {rps:9.0f} req/s  {mib:8.1f} MiB/s")
            ratio = rates[(route, "proxied")] / rates[(route, "direct")]
            print(f"  {what:12s} proxied/direct = {ratio * 100:5.1f} %  (target >= 80 %)")
        api("DELETE", f"/v1/capsules/{cid}")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()

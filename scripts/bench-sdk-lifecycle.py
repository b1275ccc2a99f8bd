#!/usr/bin/env python3
"""Lifecycle latency as the published SDK's users see it (wrenn 0.3.0, unchanged).

    cargo build --release -p wrenn --bin wrenn
    tests/sdk/run.sh --co -q >/dev/null    # makes target/sdk-venv with the SDK
    target/sdk-venv/bin/python scripts/bench-sdk-lifecycle.py [--rounds 30]
                                   [--runtime process|qemu] [--binary target/release/wrenn]

Starts `wrenn dev` in a temporary directory on a free loopback port and times, through
the SDK, what a user waits for: `Capsule(wait=True)`, `capsule.pause(wait=True)`,
`capsule.resume(wait=True)` and `capsule.destroy(wait=True)`, reporting p50/p99. The SDK
polls (every 0.5 s, 2 s for a pause) unless the server's answer already carries the
status it waits for, so these figures show whether the server answers settled.
"""

import argparse
import os
import socket
import subprocess
import tempfile
import time


def pct(values, p):
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def report(name, ms):
    print(f"{name:28s} n={len(ms):4d}  p50={pct(ms, 50):8.2f} ms  p99={pct(ms, 99):8.2f} ms")


def start_dev(binary, runtime):
    tmp = tempfile.mkdtemp(prefix="wrenn-sdk-bench-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    proc = subprocess.Popen(
        [binary, "dev", "--dir", f"{tmp}/state", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "RUST_LOG": "error", "WRENN_RUNTIME": runtime,
             # No shipped-template build in the background while measuring.
             "WRENN_DEV_BUILD_TEMPLATES": "0",
             "WRENN_IMAGE_CACHE": os.environ.get("WRENN_IMAGE_CACHE",
                                                 "/var/cache/wrenn/test-images")})
    for line in proc.stdout:
        if line.startswith("export "):
            name, value = line.strip()[len("export "):].split("=", 1)
            os.environ[name] = value
            if name == "WRENN_API_KEY":
                break
    os.environ["WRENN_BASE_URL"] = f"http://127.0.0.1:{port}"
    return proc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--runtime", choices=["process", "qemu"], default="process")
    ap.add_argument("--binary", default="target/release/wrenn")
    args = ap.parse_args()

    proc = start_dev(args.binary, args.runtime)
    from wrenn import Capsule  # after start_dev: the SDK reads its environment

    # The agent keeps disks, networks and init programs ready; let it make them, as on
    # a host that has been up a while (and, for VMs, make the warm snapshot).
    time.sleep(3)
    Capsule(wait=True).destroy(wait=True)
    try:
        timings = {"create (wait=True)": [], "pause (wait=True)": [],
                   "resume (wait=True)": [], "destroy (wait=True)": []}

        def timed(name, fn):
            t = time.perf_counter()
            out = fn()
            timings[name].append((time.perf_counter() - t) * 1000)
            return out

        for _ in range(args.rounds):
            capsule = timed("create (wait=True)", lambda: Capsule(wait=True))
            timed("pause (wait=True)", lambda: capsule.pause(wait=True))
            timed("resume (wait=True)", lambda: capsule.resume(wait=True))
            timed("destroy (wait=True)", lambda: capsule.destroy(wait=True))
        for name, ms in timings.items():
            report(name, ms)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()

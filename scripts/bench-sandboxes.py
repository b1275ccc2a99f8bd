#!/usr/bin/env python3
"""Sandbox benchmarks through the public API of `wrenn dev`.

    cargo build --release -p wrenn --bin wrenn
    scripts/bench-sandboxes.py [--rounds 30] [--concurrent 50] [--file-mib 256]
                               [--docker auto|off|on] [--docker-image debian:bookworm]
                               [--runtime process|qemu]

`--runtime qemu` runs `wrenn dev` with WRENN_RUNTIME=qemu (capsules are VMs; TCG on
hosts where KVM cannot boot guests): the first create, which makes the warm snapshot,
is reported on its own, and RSS per capsule is that of its QEMU process.

Starts `target/release/wrenn dev` in a temporary directory on a free loopback port
and measures, reporting p50/p99:
  - create -> running (POST /v1/capsules until GET says running),
  - exec `true` round trip (POST .../exec),
  - file write and read throughput (streamed multipart write / streamed read),
  - pause -> paused and resume -> running, delete -> stopped,
  - N concurrent sandboxes, with the wrenn process's RSS growth per sandbox.

Docker side by side (`--docker auto`, the default): when a Docker daemon answers on
/var/run/docker.sock and has `--docker-image` locally (nothing is pulled), the same
operations run through Docker's Engine API — create+start, exec `true`, a streamed
file write (PUT archive) and read (GET archive), pause, unpause, remove — and a
ratio column says how many times faster Wrenn is (docker p50 / wrenn p50).
Only loopback and the local Docker socket are contacted. Standard library only.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time


def pct(values, p):
    s = sorted(values)
    if not s:
        return float("nan")
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


RESULTS = {}


def report(name, ms):
    RESULTS[name] = pct(ms, 50)
    print(f"{name:34s} n={len(ms):4d}  p50={pct(ms, 50):8.2f} ms  p99={pct(ms, 99):8.2f} ms")


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the Docker daemon's API)."""

    def __init__(self, path, timeout=120):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Docker:
    """Just enough of Docker's Engine API to run the same operations as Wrenn's."""

    def __init__(self, path="/var/run/docker.sock"):
        self.path = path

    def call(self, method, url, body=None, raw=None, headers=None, stream=False):
        c = UnixHTTPConnection(self.path)
        h = dict(headers or {})
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        c.request(method, url, body=data, headers=h)
        r = c.getresponse()
        if stream:
            return r
        out = r.read()
        return r.status, (json.loads(out) if out[:1] and out[:1] in b"[{" else out)

    def available(self, image):
        try:
            st, _ = self.call("GET", "/_ping")
            if st != 200:
                return False, "daemon did not answer /_ping"
            st, _ = self.call("GET", f"/images/{image}/json")
            return (st == 200), (None if st == 200 else f"image {image} is not present locally")
        except OSError as e:
            return False, f"no daemon ({e})"

    def create(self, image):
        st, v = self.call("POST", "/containers/create",
                          {"Image": image, "Cmd": ["sleep", "infinity"], "Tty": False})
        assert st == 201, (st, v)
        cid = v["Id"]
        st, v = self.call("POST", f"/containers/{cid}/start")
        assert st == 204, (st, v)
        return cid

    def exec_true(self, cid):
        st, v = self.call("POST", f"/containers/{cid}/exec",
                          {"Cmd": ["true"], "AttachStdout": True, "AttachStderr": True})
        assert st == 201, (st, v)
        st, _ = self.call("POST", f"/exec/{v['Id']}/start", {"Detach": False, "Tty": False})
        assert st == 200, st

    def write_file(self, cid, directory, total):
        """Streams a one-file tar of `total` random bytes into `directory`."""
        import tarfile
        info = tarfile.TarInfo("bench.bin")
        info.size = total
        header = info.tobuf(format=tarfile.USTAR_FORMAT)
        pad = (512 - total % 512) % 512
        c = UnixHTTPConnection(self.path, timeout=600)
        c.putrequest("PUT", f"/containers/{cid}/archive?path={directory}")
        c.putheader("Content-Type", "application/x-tar")
        c.putheader("Content-Length", str(len(header) + total + pad + 1024))
        c.endheaders()
        c.send(header)
        chunk = os.urandom(1 << 20)
        sent = 0
        while sent < total:
            n = min(len(chunk), total - sent)
            c.send(chunk[:n])
            sent += n
        c.send(b"\0" * (pad + 1024))
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status

    def read_file(self, cid, path):
        r = self.call("GET", f"/containers/{cid}/archive?path={path}", stream=True)
        assert r.status == 200, r.status
        n = 0
        while True:
            b = r.read(1 << 20)
            if not b:
                return n
            n += len(b)

    def pause(self, cid):
        assert self.call("POST", f"/containers/{cid}/pause")[0] == 204

    def unpause(self, cid):
        assert self.call("POST", f"/containers/{cid}/unpause")[0] == 204

    def remove(self, cid):
        assert self.call("DELETE", f"/containers/{cid}?force=1")[0] == 204


def bench_docker(docker, image, rounds, file_mib):
    """The Docker side of the comparison; returns {metric: p50 ms or MiB/s}."""
    out = {}

    def timed(name, fn, n):
        ms = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1000)
        out[name] = pct(ms, 50)
        print(f"  docker {name:27s} n={n:4d}  p50={pct(ms, 50):8.2f} ms  p99={pct(ms, 99):8.2f} ms")

    ids = []
    timed("create -> running", lambda: ids.append(docker.create(image)), rounds)
    cid = ids[0]
    timed("exec `true` round trip", lambda: docker.exec_true(cid), max(100, rounds * 5))
    total = file_mib << 20
    t = time.perf_counter()
    docker.write_file(cid, "/tmp", total)
    w = time.perf_counter() - t
    t = time.perf_counter()
    docker.read_file(cid, "/tmp/bench.bin")
    r = time.perf_counter() - t
    out["file write (streamed)"] = file_mib / w
    out["file read (streamed)"] = file_mib / r
    print(f"  docker {'file write (streamed)':27s} {file_mib / w:8.1f} MiB/s")
    print(f"  docker {'file read (streamed)':27s} {file_mib / r:8.1f} MiB/s")
    some = ids[: min(len(ids), 20)]
    it = iter(some * 2)
    timed("pause -> paused", lambda: docker.pause(next(it)), len(some))
    it = iter(some)
    timed("resume -> running", lambda: docker.unpause(next(it)), len(some))
    it = iter(ids)
    timed("delete -> stopped", lambda: docker.remove(next(it)), len(ids))
    return out


class Api:
    def __init__(self, port, key):
        self.port, self.key = port, key
        self.local = threading.local()

    def conn(self):
        c = getattr(self.local, "c", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.local.c = c
        return c

    def call(self, method, path, body=None):
        headers = {"X-API-Key": self.key}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (0, 1):
            try:
                c = self.conn()
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                return r.status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw)
            except (http.client.HTTPException, OSError):
                self.local.c = None
                if attempt:
                    raise

    def status(self, cid):
        return self.call("GET", f"/v1/capsules/{cid}")[1]["status"]

    def wait(self, cid, want, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.status(cid) == want:
                return
            time.sleep(0.002)
        raise RuntimeError(f"{cid} did not become {want}")

    def create(self):
        s, v = self.call("POST", "/v1/capsules", {})
        assert s in (201, 202), (s, v)
        return v["id"]


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+)", f.read())
    return int(m.group(1)) if m else 0


def stream_write(port, key, cid, path, total):
    boundary = "wrennbench"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n{path}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.putrequest("POST", f"/v1/capsules/{cid}/files/stream/write")
    c.putheader("X-API-Key", key)
    c.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    c.putheader("Content-Length", str(len(head) + total + len(tail)))
    c.endheaders()
    chunk = os.urandom(1 << 20)
    c.send(head)
    sent = 0
    while sent < total:
        n = min(len(chunk), total - sent)
        c.send(chunk[:n])
        sent += n
    c.send(tail)
    r = c.getresponse()
    r.read()
    assert r.status == 204, r.status


def stream_read(port, key, cid, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", f"/v1/capsules/{cid}/files/stream/read", body=json.dumps({"path": path}),
              headers={"X-API-Key": key, "Content-Type": "application/json"})
    r = c.getresponse()
    assert r.status == 200, r.status
    n = 0
    while True:
        b = r.read(1 << 20)
        if not b:
            return n
        n += len(b)


def compare_with_docker(args):
    """Runs the Docker side and prints ratios, when a daemon and the image are here."""
    if args.docker == "off":
        return
    docker = Docker()
    ok, why = docker.available(args.docker_image)
    if not ok:
        if args.docker == "on":
            raise SystemExit(f"--docker on: {why}")
        print(f"(Docker comparison skipped: {why})")
        return
    print(f"Docker ({args.docker_image}) side by side:")
    theirs = bench_docker(docker, args.docker_image, args.rounds, args.file_mib)
    print(f"{'metric':34s} {'wrenn':>10s} {'docker':>10s} {'wrenn advantage':>16s}")
    for name, mine in RESULTS.items():
        if name not in theirs:
            continue
        other = theirs[name]
        unit = "MiB/s" if "file" in name else "ms"
        ratio = (mine / other) if unit == "MiB/s" else (other / mine if mine else float("nan"))
        print(f"{name:34s} {mine:10.2f} {other:10.2f} {ratio:15.2f}x  ({unit})")


def qemu_rss_kib(under):
    """RSS (KiB) of every QEMU process whose command line names `under`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().decode(errors="replace")
            if "qemu-system" not in cmdline or under not in cmdline:
                continue
            found.append(rss_kib(int(pid)))
        except OSError:
            continue
    return found


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--concurrent", type=int, default=50)
    ap.add_argument("--file-mib", type=int, default=256)
    ap.add_argument("--binary", default="target/release/wrenn")
    ap.add_argument("--log", help="keep the server's stderr here (RUST_LOG from the environment)")
    ap.add_argument("--file-path", default="/home/wrenn-user/bench.bin",
                    help="where the file benchmark writes inside the capsule")
    ap.add_argument("--docker", choices=["auto", "off", "on"], default="auto")
    ap.add_argument("--docker-image", default="debian:bookworm")
    ap.add_argument("--runtime", choices=["process", "qemu"], default="process")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="wrenn-bench-")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    log = open(args.log, "w") if args.log else subprocess.DEVNULL
    proc = subprocess.Popen([args.binary, "dev", "--dir", f"{tmp}/state", "--listen", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=log, text=True,
                            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "error")
                                 if args.log else "error",
                                 # No shipped-template build in the background.
                                 "WRENN_DEV_BUILD_TEMPLATES": "0",
                                 # One default image per machine, not one per run.
                                 "WRENN_RUNTIME": args.runtime,
                                 "WRENN_IMAGE_CACHE": os.environ.get(
                                     "WRENN_IMAGE_CACHE", "/var/cache/wrenn/test-images")})
    key = None
    for line in proc.stdout:
        if line.startswith("export WRENN_API_KEY="):
            key = line.strip().split("=", 1)[1]
            break
    api = Api(port, key)
    # The agent keeps disks, networks and init programs ready; let it make them, as on
    # a host that has been up a while.
    time.sleep(3)
    try:
        if args.runtime == "qemu":
            t = time.perf_counter()
            first = api.create()
            api.wait(first, "running", timeout=300)
            print(f"{'first create (makes the warm snapshot)':34s} {(time.perf_counter() - t) * 1000:8.0f} ms")
            api.call("DELETE", f"/v1/capsules/{first}")
            api.wait(first, "stopped")
        created = []
        ms = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            cid = api.create()
            api.wait(cid, "running")
            ms.append((time.perf_counter() - t) * 1000)
            created.append(cid)
        report("create -> running", ms)

        cid = created[0]
        ms = []
        for _ in range(max(100, args.rounds * 5)):
            t = time.perf_counter()
            st, v = api.call("POST", f"/v1/capsules/{cid}/exec", {"cmd": "true"})
            ms.append((time.perf_counter() - t) * 1000)
            assert st == 200 and v["exit_code"] == 0, v
        report("exec `true` round trip", ms)

        total = args.file_mib << 20
        t = time.perf_counter()
        stream_write(port, key, cid, args.file_path, total)
        w = time.perf_counter() - t
        t = time.perf_counter()
        n = stream_read(port, key, cid, args.file_path)
        r = time.perf_counter() - t
        assert n == total
        RESULTS["file write (streamed)"] = args.file_mib / w
        RESULTS["file read (streamed)"] = args.file_mib / r
        print(f"{'file write (streamed)':34s} {args.file_mib / w:8.1f} MiB/s ({args.file_mib} MiB)")
        print(f"{'file read (streamed)':34s} {args.file_mib / r:8.1f} MiB/s ({args.file_mib} MiB)")

        pause_ms, resume_ms = [], []
        for cid in created[: min(len(created), 20)]:
            t = time.perf_counter()
            api.call("POST", f"/v1/capsules/{cid}/pause")
            api.wait(cid, "paused")
            pause_ms.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            api.call("POST", f"/v1/capsules/{cid}/resume")
            api.wait(cid, "running")
            resume_ms.append((time.perf_counter() - t) * 1000)
        report("pause -> paused", pause_ms)
        report("resume -> running", resume_ms)

        delete_ms = []
        for cid in created:
            t = time.perf_counter()
            api.call("DELETE", f"/v1/capsules/{cid}")
            api.wait(cid, "stopped")
            delete_ms.append((time.perf_counter() - t) * 1000)
        report("delete -> stopped", delete_ms)

        before = rss_kib(proc.pid)
        ids, errors = [], []

        def one():
            try:
                local = Api(port, key)
                c = local.create()
                local.wait(c, "running", timeout=120)
                ids.append(c)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        t = time.perf_counter()
        threads = [threading.Thread(target=one) for _ in range(args.concurrent)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        took = time.perf_counter() - t
        for c in ids:
            st, v = api.call("POST", f"/v1/capsules/{c}/exec", {"cmd": "true"})
            assert st == 200, v
        after = rss_kib(proc.pid)
        print(f"{'concurrent sandboxes':34s} {len(ids)}/{args.concurrent} running in {took:.1f} s, "
              f"{len(errors)} errors; wrenn RSS {before / 1024:.1f} -> {after / 1024:.1f} MiB "
              f"({(after - before) / max(1, len(ids)):.0f} KiB per sandbox)")
        if args.runtime == "qemu":
            vms = qemu_rss_kib(tmp)
            if vms:
                print(f"{'RSS per VM (QEMU process)':34s} p50={pct(vms, 50) / 1024:8.1f} MiB  "
                      f"max={max(vms) / 1024:8.1f} MiB ({len(vms)} VMs)")
        for c in ids:
            api.call("DELETE", f"/v1/capsules/{c}")
        for c in ids:
            api.wait(c, "stopped", timeout=120)
        compare_with_docker(args)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

"""A Wrenn cluster on one machine, as the soak (scripts/soak/soak.py) runs it.

Two `wrenn-cp` replicas on one PostgreSQL and one Redis, three `wrenn-agent`s (process
runtime) registered through the real flow (`POST /v1/hosts` tokens), and a TCP load
balancer in front of the replicas that the agents call (heartbeats, events,
registration), as a production deployment would have. The cluster owns its PostgreSQL
and Redis (started here on free ports, with Redis persisting every write to its
append-only file), so the soak can kill and restart them without touching the
machine's own services.

The agents share the host without sharing anything of it: each has its own
`WRENN_DIR`, listen port, cgroup parent, capsule address range, nftables table, veth
prefix and capsule uid range.

    python3 scripts/soak/cluster.py up [--dir DIR]     # start; prints how to reach it
    python3 scripts/soak/cluster.py down [--dir DIR]   # stop what `up` started

`up` leaves the processes running and records them in DIR/cluster.json; `down` stops
them and removes what the cluster made on the host. The binaries come from
$CARGO_TARGET_DIR (default target/)/debug.
"""

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"


def pg_bin(name):
    """A program of the newest PostgreSQL installed from Debian's packages."""
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name))
    if not versions:
        raise SystemExit("PostgreSQL's server programs are not installed (/usr/lib/postgresql)")
    return str(versions[-1] / name)


REPLICAS = ("cp-a", "cp-b")
AGENTS = 3


def free_port():
    """A loopback port below the ephemeral range (no outgoing connection takes it)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(1000):
        port = 10000 + secrets.randbelow(low - 10000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port")


def wait(what, check, timeout=60.0, every=0.2):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, OSError, KeyError, ValueError, subprocess.CalledProcessError) as e:
            last = e
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout}s (last: {last!r})")


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Proc:
    """One process of the cluster: started, killed with SIGKILL, restarted."""

    def __init__(self, name, argv, env, log, port=None):
        self.name, self.argv, self.env, self.log, self.port = name, argv, env, log, port
        self.popen = None
        self.pid = None

    def start(self):
        if self.port is not None:
            # A killed process's port is free once the kernel has closed its socket.
            wait(f"{self.name}'s port {self.port} is free", lambda: not port_open(self.port), 30)
        out = open(self.log, "a")
        out.write(f"\n===== start {time.strftime('%H:%M:%S')}\n")
        out.flush()
        self.popen = subprocess.Popen(
            self.argv, env=self.env, stdout=out, stderr=out, start_new_session=True
        )
        self.pid = self.popen.pid
        return self

    def alive(self):
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and Path(f"/proc/{self.pid}").exists()

    def kill9(self):
        self._signal(signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout=30):
        self._signal(signal.SIGTERM)
        if not self._reap(timeout):
            self.kill9()

    def _signal(self, sig):
        if self.pid is None:
            return
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    def _reap(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.popen is not None:
                if self.popen.poll() is not None:
                    return True
            elif not Path(f"/proc/{self.pid}").exists():
                return True
            time.sleep(0.05)
        return False


class Cluster:
    def __init__(self, workdir):
        self.dir = Path(workdir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        # PostgreSQL runs as its own user and must reach its data directory inside
        # (a `mkdtemp` directory is 0700); what is secret below keeps its own modes.
        os.chmod(self.dir, 0o711)
        self.procs = {}
        self.state = {}

    # ---- the services the control plane needs -----------------------------------

    def start_postgres(self):
        data = self.dir / "pg"
        port = self.state.setdefault("pg_port", free_port())
        if not (data / "PG_VERSION").exists():
            data.mkdir(exist_ok=True)
            shutil.chown(data, "postgres", "postgres")
            made = subprocess.run(
                ["runuser", "-u", "postgres", "--", pg_bin("initdb"), "-D", str(data),
                 "-A", "trust", "-U", "postgres", "--no-sync"],
                capture_output=True, text=True,
            )
            if made.returncode != 0:
                raise RuntimeError(f"initdb failed: {made.stderr.strip()}")
        self.procs["postgres"] = Proc(
            "postgres",
            ["runuser", "-u", "postgres", "--", pg_bin("postgres"), "-D", str(data),
             "-p", str(port), "-k", str(data), "-c", "listen_addresses=127.0.0.1",
             "-c", "max_connections=200", "-c", "fsync=on"],
            dict(os.environ),
            self.dir / "postgres.log",
            port,
        ).start()
        wait("PostgreSQL answers", lambda: self.psql("SELECT 1", db="postgres") == "1", 60)
        if self.psql("SELECT 1 FROM pg_database WHERE datname = 'wrenn'", db="postgres") != "1":
            self.psql("CREATE DATABASE wrenn", db="postgres")

    def stop_postgres(self, immediate=False):
        """`immediate` is a crash: no checkpoint, recovery from the WAL at next start."""
        p = self.procs["postgres"]
        data = self.dir / "pg"
        subprocess.run(
            ["runuser", "-u", "postgres", "--", pg_bin("pg_ctl"), "-D", str(data),
             "-m", "immediate" if immediate else "fast", "-w", "stop"],
            capture_output=True,
        )
        p._reap(30)

    def start_redis(self):
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        port = self.state.setdefault("redis_port", free_port())
        self.procs["redis"] = Proc(
            "redis",
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            dict(os.environ),
            self.dir / "redis.log",
            port,
        ).start()
        wait("Redis answers", lambda: self.redis("PING") == "PONG", 30)

    def psql(self, sql, db="wrenn"):
        out = subprocess.run(
            ["psql", "-h", "127.0.0.1", "-p", str(self.state["pg_port"]), "-U", "postgres",
             "-d", db, "-tAXq", "-F", "\t", "-c", sql],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return out.stdout.strip()

    def redis(self, *args):
        out = subprocess.run(
            ["redis-cli", "-p", str(self.state["redis_port"]), *args],
            check=True, capture_output=True, text=True, timeout=30,
        )
        return out.stdout.strip()

    # ---- the control plane -------------------------------------------------------

    def cp_env(self, name):
        s = self.state
        return {
            **os.environ,
            "RUST_LOG": os.environ.get("RUST_LOG", "info,sqlx=warn,tower_http=warn"),
            "WRENN_DIR": str(self.dir / name),
            "DATABASE_URL": f"postgres://postgres@127.0.0.1:{s['pg_port']}/wrenn",
            "REDIS_URL": f"redis://127.0.0.1:{s['redis_port']}",
            "WRENN_CP_LISTEN_ADDR": f"127.0.0.1:{s['ports'][name]}",
            "WRENN_PROXY_DOMAIN": f"localhost:{s['ports'][name]}",
            "WRENN_SCHEDULER": "round_robin",
            "JWT_SECRET": s["jwt_secret"],
            "WRENN_ENCRYPTION_KEY": s["encryption_key"],
            "WRENN_CREATE_WAIT_MS": "60000",
            "WRENN_LIFECYCLE_WAIT_MS": "60000",
            "WRENN_HOST_MONITOR_INTERVAL_SECS": "5",
            # Three of the agents' 5 s heartbeats, as in production (90 s, 30 s):
            # an agent killed for 20 s is marked unreachable, a database blip is not.
            "WRENN_HOST_UNREACHABLE_AFTER_SECS": "15",
            "WRENN_TRANSIENT_GRACE_SECS": "20",
            "WRENN_WORKER_LEASE_SECS": "10",
            "WRENN_METRICS_SAMPLE_INTERVAL_SECS": "5",
            "WRENN_DB_MAX_CONNECTIONS": "8",
            # The scheduler's view of the agents' capacity (see agent_env).
            "WRENN_CPU_OVERCOMMIT": "16",
            "WRENN_CHANNELS_CLAIM_AFTER_MS": "30000",
            "WRENN_CHANNELS_ALLOW": "127.0.0.1/32",
            "WRENN_CHANNELS_RETRY_BASE_MS": "1000",
            "WRENN_CHANNELS_RETRY_MAX_MS": "5000",
            "WRENN_CHANNELS_MAX_ATTEMPTS": "20",
            **(
                {"WRENN_CA_CERT": s["ca_cert"], "WRENN_CA_KEY": s["ca_key"]}
                if "ca_cert" in s
                else {}
            ),
        }

    def base(self, name):
        return f"http://127.0.0.1:{self.state['ports'][name]}"

    def start_replica(self, name):
        self.procs[name] = Proc(
            name, [str(BIN / "wrenn-cp")], self.cp_env(name), self.dir / f"{name}.log",
            self.state["ports"][name],
        ).start()
        wait(f"{name} answers", lambda: httpx.get(f"{self.base(name)}/health").status_code == 200, 60)

    def start_balancer(self):
        s = self.state
        argv = [sys.executable, str(Path(__file__).resolve()), "balance", str(s["lb_port"])]
        argv += [str(s["ports"][n]) for n in REPLICAS]
        self.procs["balancer"] = Proc(
            "balancer", argv, dict(os.environ), self.dir / "balancer.log", s["lb_port"]
        ).start()
        wait("the balancer listens", lambda: port_open(s["lb_port"]), 10)

    # ---- hosts -------------------------------------------------------------------

    def agent_env(self, n):
        s = self.state
        a = s["agents"][n]
        return {
            **os.environ,
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            "WRENN_DIR": str(self.dir / f"agent-{n}"),
            "WRENN_CP_URL": f"http://127.0.0.1:{s['lb_port']}",
            "WRENN_REGISTRATION_TOKEN": a["token"],
            "WRENN_HOST_ADDRESS": f"127.0.0.1:{a['port']}",
            "WRENN_HOST_LISTEN_ADDR": f"127.0.0.1:{a['port']}",
            "WRENN_ENVD_BIN": str(BIN / "wrenn-envd"),
            "WRENN_WARM_CAPSULES": "0",
            "WRENN_HEARTBEAT_INTERVAL_SECS": "5",
            # Three agents share this machine's cores: each may place 32 one-vCPU
            # capsules (the default 4 per core would refuse creates at 24 in all).
            "WRENN_CPU_OVERCOMMIT": "16",
            # What of the host this agent owns.
            "WRENN_CGROUP_PARENT": a["cgroup_parent"],
            "WRENN_CAPSULE_NETWORK": a["network"],
            "WRENN_FIREWALL_TABLE": a["table"],
            "WRENN_VETH_PREFIX": a["veth_prefix"],
            "WRENN_CAPSULE_ID_BASE": str(a["id_base"]),
            "WRENN_CAPSULE_ID_RANGES": "1024",
        }

    def start_agent(self, n):
        self.procs[f"agent-{n}"] = Proc(
            f"agent-{n}", [str(BIN / "wrenn-agent")], self.agent_env(n),
            self.dir / f"agent-{n}.log", self.state["agents"][n]["port"],
        ).start()

    def admin(self, replica="cp-a"):
        return httpx.Client(
            base_url=self.base(replica),
            headers={"Authorization": f"Bearer {self.state['admin_token']}"},
            timeout=60,
        )

    def hosts_online(self):
        listed = self.admin().get("/v1/hosts").json()
        ids = {a["host_id"] for a in self.state["agents"].values()}
        return sum(h["status"] == "online" for h in listed if h["id"] in ids) == len(ids)

    # ---- the whole ---------------------------------------------------------------

    def up(self):
        cache = os.environ.get("WRENN_IMAGE_CACHE")
        if not cache or not Path(cache, "builds").is_dir():
            raise SystemExit(
                "set WRENN_IMAGE_CACHE to a directory holding the default image "
                "(built by `wrenn image build`), so the agents do not each build one"
            )
        s = self.state
        s["ports"] = {n: free_port() for n in REPLICAS}
        s["lb_port"] = free_port()
        s["jwt_secret"] = secrets.token_hex(32)
        s["encryption_key"] = secrets.token_hex(32)
        self.start_postgres()
        self.start_redis()
        # The first replica makes the host CA; the second is given the same one (every
        # replica must verify the agents' certificates and sign renewals alike).
        self.start_replica("cp-a")
        secrets_dir = self.dir / "cp-a" / "secrets"
        s["ca_cert"], s["ca_key"] = str(secrets_dir / "ca.pem"), str(secrets_dir / "ca-key.pem")
        self.start_replica("cp-b")
        self.start_balancer()

        email, password = "soak@wrenn.example", secrets.token_hex(12)
        r = httpx.post(
            f"{self.base('cp-a')}/v1/auth/signup",
            json={"email": email, "password": password, "name": "Soak"},
        )
        r.raise_for_status()
        s["admin_token"] = httpx.post(
            f"{self.base('cp-b')}/v1/auth/login", json={"email": email, "password": password}
        ).json()["token"]
        s["agents"] = {}
        for n in range(1, AGENTS + 1):
            r = self.admin().post("/v1/hosts", json={"type": "regular", "provider": "local"})
            r.raise_for_status()
            host = r.json()
            s["agents"][n] = {
                "host_id": host["host"]["id"],
                "token": host["registration_token"],
                "port": free_port(),
                "cgroup_parent": f"wrenn-soak-{os.getpid()}-{n}",
                "network": f"10.{220 + n}.0.0/16",
                "table": f"wrenn_soak_{os.getpid()}_{n}",
                "veth_prefix": f"wsk{n}v",
                "id_base": 2**31 + n * 1024 * 65536,
            }
        for n in s["agents"]:
            self.start_agent(n)
        wait("every host registers and comes online", self.hosts_online, 180)
        r = self.admin().post("/v1/api-keys", json={"name": "soak"})
        r.raise_for_status()
        s["api_key"] = r.json()["key"]
        self.save()

    def save(self):
        pids = {name: p.pid for name, p in self.procs.items()}
        (self.dir / "cluster.json").write_text(json.dumps({**self.state, "pids": pids}, indent=1))

    @classmethod
    def load(cls, workdir):
        c = cls(workdir)
        saved = json.loads((c.dir / "cluster.json").read_text())
        pids = saved.pop("pids")
        saved["agents"] = {int(k): v for k, v in saved["agents"].items()}
        c.state = saved
        for name, pid in pids.items():
            p = Proc(name, [], {}, c.dir / f"{name}.log")
            p.pid = pid
            c.procs[name] = p
        return c

    def down(self):
        order = ["balancer", *REPLICAS, *(f"agent-{n}" for n in self.state.get("agents", {}))]
        for name in order:
            if name in self.procs:
                self.procs[name].stop()
        if "postgres" in self.procs:
            self.stop_postgres()
        if "redis" in self.procs:
            self.procs["redis"].stop()
        # The agents leave their firewall tables and parent cgroups for a successor on
        # the same host; the cluster is gone for good.
        for a in self.state.get("agents", {}).values():
            subprocess.run(["nft", "delete", "table", "inet", a["table"]], capture_output=True)
            for hierarchy in Path("/sys/fs/cgroup").iterdir():
                parent = hierarchy / a["cgroup_parent"]
                if parent.is_dir():
                    try:
                        parent.rmdir()
                    except OSError:
                        pass

    def dump_logs(self, lines=60):
        for name in self.procs:
            path = self.dir / f"{name}.log"
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {name} (last {len(tail)} lines of {path})")
                print("\n".join(tail))


# ---- the load balancer in front of the replicas ------------------------------------


async def balance(listen, backends):
    """Round robin over `backends`; a backend that refuses the connection is skipped."""
    turn = 0

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except OSError:
                pass

    async def serve(client_r, client_w):
        nonlocal turn
        for _ in range(len(backends)):
            port = backends[turn % len(backends)]
            turn += 1
            try:
                up_r, up_w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
            except (OSError, asyncio.TimeoutError):
                continue
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
            return
        client_w.close()

    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    async with server:
        await server.serve_forever()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for cmd in ("up", "down"):
        p = sub.add_parser(cmd)
        p.add_argument("--dir", default="/tmp/wrenn-cluster")
    p = sub.add_parser("balance")
    p.add_argument("listen", type=int)
    p.add_argument("backends", type=int, nargs="+")
    args = parser.parse_args()
    if args.cmd == "balance":
        asyncio.run(balance(args.listen, args.backends))
    elif args.cmd == "up":
        c = Cluster(args.dir)
        try:
            c.up()
        except BaseException:
            c.dump_logs()
            c.down()
            raise
        s = c.state
        print(f"replicas: {c.base('cp-a')} {c.base('cp-b')}")
        print(f"agents call: http://127.0.0.1:{s['lb_port']}")
        print(f"api key: {s['api_key']}")
        print(f"state and logs: {c.dir}")
    else:
        Cluster.load(args.dir).down()


if __name__ == "__main__":
    main()

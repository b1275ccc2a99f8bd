"""The SDK suite against a multi-host deployment, set up as a platform engineer would.

`wrenn-cp` on PostgreSQL (a fresh database) with Redis Streams as its event bus, and
two `wrenn-agent` hosts (process runtime) registered with one-time tokens from
`POST /v1/hosts` and called over mutual TLS. The first account to sign up is the
platform admin; it makes an API key, queues the shipped code-runner-beta recipe as an
admin build, and the unchanged SDK suite (tests/sdk/*.py) runs against the control
plane. Capsules are placed round robin, so they land on both hosts; afterwards this
checks that they did, and that a code runner capsule on the host that did not build
the template works (its snapshot was copied there).

Run by tests/sdk/run-multi-host.sh (which builds the binaries and the venv); needs
WRENN_TEST_POSTGRES_URL and WRENN_TEST_REDIS_URL.
"""

import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts" / "soak"))
from cluster import free_port, wait  # noqa: E402  (the soak's cluster helpers)

BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug"
CA_DIR = Path("/usr/local/share/ca-certificates")


def psql(url, sql):
    out = subprocess.run(
        ["psql", url, "-tAc", sql], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


class Deployment:
    def __init__(self, workdir):
        self.dir = Path(workdir)
        self.procs = []
        pg = urlsplit(os.environ["WRENN_TEST_POSTGRES_URL"])
        self.admin_db = urlunsplit(pg._replace(path="/postgres"))
        self.db_name = f"wrenn_multi_host_{os.getpid()}"
        self.db = urlunsplit(pg._replace(path=f"/{self.db_name}"))
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def spawn(self, name, argv, env):
        log = open(self.dir / f"{name}.log", "w")
        full = {**os.environ, **env, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.procs.append((name, subprocess.Popen(argv, env=full, stdout=log, stderr=log)))

    def start(self):
        psql(self.admin_db, f'CREATE DATABASE "{self.db_name}"')
        self.spawn(
            "control-plane",
            [str(BIN / "wrenn-cp")],
            {
                "WRENN_DIR": str(self.dir / "cp"),
                "DATABASE_URL": self.db,
                "REDIS_URL": os.environ["WRENN_TEST_REDIS_URL"],
                "WRENN_CP_LISTEN_ADDR": f"127.0.0.1:{self.port}",
                "WRENN_PROXY_DOMAIN": f"localhost:{self.port}",
                "WRENN_SCHEDULER": "round_robin",
                "WRENN_CREATE_WAIT_MS": "60000",
            },
        )
        wait("the control plane answers", lambda: httpx.get(f"{self.base}/health").status_code == 200)

        self.email, self.password = "platform@wrenn.example", secrets.token_hex(12)
        r = httpx.post(
            f"{self.base}/v1/auth/signup",
            json={"email": self.email, "password": self.password, "name": "Platform"},
        )
        assert r.status_code in (200, 201), r.text
        token = httpx.post(
            f"{self.base}/v1/auth/login",
            json={"email": self.email, "password": self.password},
        ).json()["token"]
        self.admin = httpx.Client(
            base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )

        self.hosts = []
        for n in (1, 2):
            r = self.admin.post("/v1/hosts", json={"type": "regular", "provider": "local"})
            assert r.status_code == 201, r.text
            host = r.json()
            listen = f"127.0.0.1:{free_port()}"
            self.spawn(
                f"agent-{n}",
                [str(BIN / "wrenn-agent")],
                {
                    "WRENN_DIR": str(self.dir / f"agent-{n}"),
                    "WRENN_CP_URL": self.base,
                    "WRENN_REGISTRATION_TOKEN": host["registration_token"],
                    "WRENN_HOST_ADDRESS": listen,
                    "WRENN_HOST_LISTEN_ADDR": listen,
                    "WRENN_ENVD_BIN": str(BIN / "wrenn-envd"),
                    "WRENN_WARM_CAPSULES": "0",
                },
            )
            self.hosts.append(host["host"]["id"])

        def online():
            listed = self.admin.get("/v1/hosts").json()
            return sum(h["status"] == "online" for h in listed if h["id"] in self.hosts) == 2

        wait("both hosts register and come online", online, timeout=120)
        r = self.admin.post("/v1/api-keys", json={"name": "sdk"})
        assert r.status_code == 201, r.text
        self.api_key = r.json()["key"]

    def queue_code_runner(self):
        """The shipped recipe as an admin build (trusting this machine's extra CAs)."""
        req = json.loads((ROOT / "templates" / "code-runner-beta.json").read_text())
        pem = "".join(p.read_text() for p in sorted(CA_DIR.glob("*.crt"))).strip()
        if pem:
            req["recipe"] = [
                "RUN sudo tee /usr/local/share/ca-certificates/extra.crt >/dev/null <<'EOF'\n"
                f"{pem}\nEOF\nsudo update-ca-certificates",
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
            ] + req["recipe"]
        r = self.admin.post("/v1/admin/builds", json=req)
        assert r.status_code == 201, r.text

    def sdk_env(self):
        creds = self.dir / "admin.json"
        creds.write_text(json.dumps({"email": self.email, "password": self.password}))
        return {
            **os.environ,
            "WRENN_BASE_URL": self.base,
            "WRENN_API_KEY": self.api_key,
            "WRENN_PROXY_DOMAIN": f"localhost:{self.port}",
            "WRENN_DEV_CREDENTIALS": str(creds),
        }

    def stop(self):
        for _, p in reversed(self.procs):
            p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        psql(self.admin_db, f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def dump_logs(self):
        for name, _ in self.procs:
            lines = (self.dir / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"--- {name} (last 40 lines)")
            print("\n".join(lines[-40:]))


def code_runners_work_on_both_hosts(d):
    """Two more code runner capsules (round robin: one per host) both run code."""
    os.environ.update(d.sdk_env())
    from wrenn.code_runner import Capsule as CodeRunner

    for _ in range(2):
        c = CodeRunner()
        try:
            out = c.run_code("print(6 * 7)")
            assert out.error is None and "".join(out.logs.stdout) == "42\n", out
        finally:
            c.destroy()
    return psql(
        d.db,
        "SELECT count(DISTINCT host_id) FROM sandboxes WHERE template = 'code-runner-beta' "
        "AND NOT metadata ? 'wrenn_build'",
    )


def main():
    with tempfile.TemporaryDirectory(prefix="wrenn-multi-") as workdir:
        d = Deployment(workdir)
        status = 1
        try:
            d.start()
            d.queue_code_runner()
            status = subprocess.call(
                [
                    sys.executable,
                    "-m",
                    "pytest",
                    "-q",
                    "tests/sdk/test_sdk.py",
                    "tests/sdk/test_environment.py",
                    "tests/sdk/test_capsule_urls.py",
                    *sys.argv[1:],
                ],
                cwd=ROOT,
                env=d.sdk_env(),
            )
            if status == 0:
                used = psql(d.db, "SELECT count(DISTINCT host_id) FROM sandboxes")
                assert used == "2", f"capsules ran on {used} host(s), not both"
                runner_hosts = code_runners_work_on_both_hosts(d)
                copies = psql(
                    d.db,
                    "SELECT count(*) FROM template_hosts th JOIN templates t "
                    "ON t.id = th.template_id WHERE t.name = 'code-runner-beta'",
                )
                print(
                    f"multi-host: capsules ran on both hosts; code runner capsules on "
                    f"{runner_hosts} host(s); code-runner-beta's files on {copies} host(s)"
                )
                assert runner_hosts == "2" and copies == "2", (runner_hosts, copies)
        except Exception:
            status = 1
            raise
        finally:
            if status != 0:
                d.dump_logs()
            d.stop()
        return status


if __name__ == "__main__":
    sys.exit(main())

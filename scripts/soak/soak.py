"""The fault soak: a cluster (scripts/soak/cluster.py) under load while its parts die.

Clients drive both control-plane replicas over the REST API, each capsule through
create, file write and read-back, exec, pause, resume, snapshot, create-from-snapshot
and destroy, while a fault schedule kills -9 an agent (restarted 20 s later), kills -9
each control-plane replica (restarted), crashes and restarts Redis, and crashes and
restarts PostgreSQL. A client whose replica stops answering fails over to the other
one, as a client behind a load balancer would, and settles what it asked for by
looking (a create is found again by the operation id in its metadata).

Then it checks, from what the kernel, PostgreSQL and Redis hold rather than from the
code under test:

- lost: an operation with no final answer, or a capsule a client still holds that is
  no longer alive (or that cannot be found);
- contradictory: a capsule whose row says running, paused or hibernated while its host
  runs something else (its cgroup, freezer state, processes and network namespace),
  or the reverse;
- stuck: a capsule still in a transient status after the host monitor's window;
- leaked: after every capsule and snapshot is destroyed, any capsule network
  namespace, cgroup, process, mount, sandbox or template directory left on the hosts,
  and (after the cluster stops) any loop device or mount under its directory;
- corrupted: a file read back (during the run, after pause and resume, from a
  capsule made from a snapshot, and of every live capsule at the end) that differs
  from what was written;
- events: an entry of an event stream that a consumer group has not had delivered
  and acknowledged (each group's lag and pending count must be zero).

It prints `soak: ops=N lost=0 contradictory=0 stuck=0 leaked=0 corrupted=0` and exits
non-zero unless every count but ops is zero.

    python3 scripts/soak/soak.py --ops 200 --clients 6
"""

import argparse
import hashlib
import http.server
import json
import random
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cluster import AGENTS, REPLICAS, Cluster, wait  # noqa: E402

TRANSIENT = {"pending", "starting", "resuming", "pausing", "stopping", "snapshotting"}
ALIVE = {"running", "paused", "hibernated"}
# Not an answer yet: a transient status, or `missing` (its host stopped answering;
# the host monitor settles it once the host is back).
UNSETTLED = TRANSIENT | {"missing"}
SANDBOX_STREAMS = ("wrenn:sandbox-events", "wrenn:events")
SETTLE = 90  # host monitor interval 5 s + transient grace 20 s + event claim 60 s


def wire_id(prefix, uuid_text):
    """The API's id of a database uuid: prefix + 25 base36 digits (wrenn_core::id)."""
    n = uuid.UUID(uuid_text).int
    digits = []
    for _ in range(25):
        n, d = divmod(n, 36)
        digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[d])
    return prefix + "".join(reversed(digits))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Tally:
    """Counts shared by the clients, the fault schedule and the checks."""

    def __init__(self, target, rate):
        self.target = target
        self.rate = rate
        self.started = time.time()
        self.lock = threading.Lock()
        self.ops = 0
        self.outcomes = Counter()
        # (event, resource id) -> times an API answer said it happened: each must
        # reach the webhook, whatever was down when it happened.
        self.said = Counter()
        self.problems = Counter()
        self.details = []

    def take(self):
        """Claims one operation of the budget (at the run's pace); False once it is spent."""
        with self.lock:
            if self.ops >= self.target:
                return False
            self.ops += 1
            due = self.started + self.ops / self.rate
        time.sleep(max(0.0, due - time.time()))
        return True

    def outcome(self, kind, what):
        with self.lock:
            self.outcomes[f"{kind}:{what}"] += 1

    def happened(self, event, resource):
        """An API answer said `event` happened to `resource`: a webhook must tell."""
        with self.lock:
            self.said[(event, resource)] += 1

    def problem(self, kind, detail):
        with self.lock:
            self.problems[kind] += 1
            self.details.append(f"{kind}: {detail}")
        log(f"PROBLEM {kind}: {detail}")

    def progress(self):
        with self.lock:
            return self.ops / self.target


class Interrupted(Exception):
    """Neither replica gave an answer."""


class Api:
    """A client's connection to the platform: one replica, the other on failure."""

    def __init__(self, cluster, first):
        key = cluster.state["api_key"]
        self.clients = [
            httpx.Client(base_url=cluster.base(n), headers={"X-API-Key": key}, timeout=120)
            for n in REPLICAS
        ]
        self.turn = first

    def call(self, method, path, deadline=120, **kw):
        """The first answer of either replica; transport errors switch replica."""
        give_up = time.time() + deadline
        last = None
        while time.time() < give_up:
            client = self.clients[self.turn % len(self.clients)]
            try:
                return client.request(method, path, **kw)
            except httpx.TransportError as e:
                last = e
                self.turn += 1
                time.sleep(0.5)
        raise Interrupted(f"{method} {path}: no answer in {deadline}s ({last!r})")

    def status(self, cid, deadline=120):
        """The capsule's status; a server error (its database restarting) is retried."""
        give_up = time.time() + deadline
        while True:
            r = self.call("GET", f"/v1/capsules/{cid}")
            if r.status_code == 404:
                return None
            if r.status_code < 500 or time.time() > give_up:
                r.raise_for_status()
                return r.json()["status"]
            time.sleep(0.5)

    def list(self):
        """Every capsule of the team (retried like `status`)."""
        give_up = time.time() + 120
        while True:
            r = self.call("GET", "/v1/capsules")
            if r.status_code < 500 or time.time() > give_up:
                r.raise_for_status()
                return r.json()
            time.sleep(0.5)

    def settle(self, cid, timeout=SETTLE + 30):
        """The capsule's status once it is settled (None: not found)."""
        deadline = time.time() + timeout
        while True:
            s = self.status(cid)
            if s not in UNSETTLED or time.time() > deadline:
                return s
            time.sleep(0.5)


class Client(threading.Thread):
    """One user of the platform: capsules through their life, checking what it reads."""

    def __init__(self, n, cluster, tally, held, snapshots, destroying):
        super().__init__(name=f"client-{n}", daemon=True)
        self.n, self.cluster, self.tally = n, cluster, tally
        self.api = Api(cluster, n)
        self.rng = random.Random(n)
        self.held = held  # capsule id -> {path: bytes}, shared for the final check
        self.snapshots = snapshots
        self.destroying = destroying  # destroys answered while the capsule was stopping
        self.seq = 0

    def op_id(self):
        self.seq += 1
        return f"c{self.n}-{self.seq}"

    def run(self):
        while self.tally.progress() < 1:
            try:
                self.lifecycle()
            except Interrupted as e:
                self.tally.problem("lost", str(e))
            except Exception:  # noqa: BLE001 - a harness bug must not pass silently
                self.tally.problem("harness", traceback.format_exc())

    # ---- one capsule's life --------------------------------------------------------

    def lifecycle(self):
        cid = self.create(template=None)
        if cid is None:
            return
        files = {}
        self.held[cid] = files
        if not self.write_and_check(cid, files):
            return
        self.exec_check(cid, files)
        if self.pause(cid) and self.resume(cid):
            self.read_all(cid, files, "after pause and resume")
        if self.rng.random() < 0.4:
            self.snapshot_round(cid, files)
        if self.rng.random() < 0.5:
            self.destroy(cid)

    def budget(self):
        return self.tally.take()

    def create(self, template):
        if not self.budget():
            return None
        op = self.op_id()
        body = {"timeout_sec": 0, "metadata": {"soak_op": op}}
        if template:
            body["template"] = template
        try:
            r = self.api.call("POST", "/v1/capsules", json=body)
        except Interrupted:
            # Did it happen? The operation id finds it.
            cid = self.find(op)
            self.tally.outcome("create", "interrupted")
            if cid is None:
                return None
            return cid if self.api.settle(cid) == "running" else self.forget(cid)
        if r.status_code not in (201, 202):
            # A final answer: nothing was created.
            code = (r.json().get("error") or {}).get("code") if r.headers.get("content-type", "").startswith("application/json") else ""
            self.tally.outcome("create", f"refused {r.status_code} {code}")
            return None
        cid = r.json()["id"]
        status = r.json()["status"]
        if status != "running":
            status = self.api.settle(cid)
        self.tally.outcome("create", status)
        if status == "running":
            self.tally.happened("capsule.created", cid)
            self.tally.happened("capsule.running", cid)
            return cid
        return self.forget(cid)

    def forget(self, cid):
        """A capsule that did not start: destroy it, so nothing is left of it."""
        self.api.call("DELETE", f"/v1/capsules/{cid}")
        return None

    def find(self, op):
        for c in self.api.list():
            if (c.get("metadata") or {}).get("soak_op") == op:
                return c["id"]
        return None

    def write_and_check(self, cid, files):
        if not self.budget():
            return False
        path = f"/home/user/soak/{self.op_id()}.bin"
        data = secrets.token_bytes(self.rng.choice((1, 4096, 65536, 300_000)))
        r = self.api.call(
            "POST", f"/v1/capsules/{cid}/files/write",
            data={"path": path}, files={"file": ("upload", data)},
        )
        self.tally.outcome("write", r.status_code)
        if r.status_code != 204:
            return self.fate(cid, f"write answered {r.status_code}: {r.text[:200]}")
        files[path] = data
        return self.read_all(cid, {path: data}, "right after writing")

    def read_all(self, cid, files, when):
        for path, data in list(files.items()):
            if not self.budget():
                return False
            r = self.api.call("POST", f"/v1/capsules/{cid}/files/read", json={"path": path})
            self.tally.outcome("read", r.status_code)
            if r.status_code != 200:
                return self.fate(cid, f"read answered {r.status_code}: {r.text[:200]}")
            if r.content != data:
                self.tally.problem(
                    "corrupted", f"{cid} {path} {when}: {len(r.content)} bytes, wrote {len(data)}"
                )
        return True

    def exec_check(self, cid, files):
        if not files or not self.budget():
            return
        path, data = next(iter(files.items()))
        r = self.api.call(
            "POST", f"/v1/capsules/{cid}/exec",
            json={"cmd": "/bin/sh", "args": ["-c", f"sleep 1; sha256sum {path}"], "timeout_sec": 30},
        )
        self.tally.outcome("exec", r.status_code)
        if r.status_code != 200:
            self.fate(cid, f"exec answered {r.status_code}: {r.text[:200]}")
            return
        out = r.json()
        stdout = out["stdout"]
        if out.get("encoding") == "base64":
            import base64

            stdout = base64.b64decode(stdout).decode()
        if not stdout.startswith(hashlib.sha256(data).hexdigest()):
            self.tally.problem("corrupted", f"{cid} {path}: sha256sum says {stdout!r}")

    def answer(self, method, path, **kw):
        """The status code of a lifecycle request, or `interrupted` when neither replica
        answered (the capsule's status then tells what happened)."""
        try:
            return self.api.call(method, path, **kw).status_code
        except Interrupted:
            return "interrupted"

    def transition(self, cid, action, want):
        if not self.budget():
            return False
        code = self.answer("POST", f"/v1/capsules/{cid}/{action}")
        status = self.api.settle(cid)
        self.tally.outcome(action, f"{code}->{status}")
        if status == want:
            if isinstance(code, int) and code < 300:
                self.tally.happened(ACTION_EVENTS[action], cid)
            return True
        return self.fate(cid, f"{action} answered {code}, capsule is {status}")

    def pause(self, cid):
        return self.transition(cid, "pause", "paused")

    def resume(self, cid):
        return self.transition(cid, "resume", "running")

    def fate(self, cid, why):
        """After an error answer: the capsule must still be alive, or the client lost it."""
        status = self.api.settle(cid)
        if status in ALIVE:
            return False  # the operation failed (a final answer); the capsule lives on
        self.held.pop(cid, None)
        self.tally.problem("lost", f"capsule {cid} is {status} ({why})")
        return False

    def snapshot_round(self, cid, files):
        if not self.budget():
            return
        name = f"soak-{self.op_id()}"
        code = self.answer(
            "POST", "/v1/snapshots", json={"sandbox_id": cid, "name": name}, deadline=300
        )
        self.tally.outcome("snapshot", code)
        self.snapshots.add(name)
        if code == 201:
            self.tally.happened("template.snapshot.created", name)
        status = self.api.settle(cid)
        if status not in ALIVE:
            self.fate(cid, f"snapshot answered {code}")
        if code != 201:
            return
        if status == "paused" and not self.resume(cid):
            return
        child = self.create(template=name)
        if child is None:
            return
        self.held[child] = dict(files)
        self.read_all(child, files, f"in a capsule made from snapshot {name}")
        self.destroy(child)

    def destroy(self, cid):
        if not self.budget():
            return
        code = self.answer("DELETE", f"/v1/capsules/{cid}")
        status = self.api.settle(cid)
        self.tally.outcome("destroy", f"{code}->{status}")
        if isinstance(code, int) and code < 300 and status in (None, "stopped"):
            self.tally.happened("capsule.destroyed", cid)
        if status is None:
            log(f"note: {cid} answered 404 after destroy ({code})")
        if status in ALIVE:
            # Refused: it is still held (and destroyed by the final sweep).
            return
        # Destroyed, or still stopping (its host is down): it must end up stopped.
        self.held.pop(cid, None)
        if status in UNSETTLED:
            self.destroying.add(cid)


# ---- faults ----------------------------------------------------------------------------


class Faults(threading.Thread):
    """Every fault once per round (one round per 500 operations), spread over the run
    by the share of operations done."""

    def __init__(self, cluster, tally, rounds=1):
        super().__init__(name="faults", daemon=True)
        self.cluster, self.tally, self.rounds = cluster, tally, rounds
        self.timers = []
        self.done = []
        self.error = None

    def at(self, share):
        while self.tally.progress() < share:
            time.sleep(0.2)

    def later(self, seconds, f):
        t = threading.Timer(seconds, f)
        t.start()
        self.timers.append(t)

    def run(self):
        try:
            for r in range(self.rounds):
                self.round(r / self.rounds, 1 / self.rounds)
        except Exception:  # noqa: BLE001
            self.error = traceback.format_exc()
        for t in self.timers:
            t.join()

    def round(self, start, share):
        """Every fault once, between `start` and `start + share` of the run."""
        c = self.cluster
        at = lambda point: self.at(start + point * share)  # noqa: E731
        at(0.12)
        victim = 1 + secrets.randbelow(AGENTS)
        log(f"fault: kill -9 agent-{victim} (restarted in 20 s)")
        c.procs[f"agent-{victim}"].kill9()
        self.later(20, lambda: (log(f"restart agent-{victim}"), c.start_agent(victim)))
        self.done.append(f"agent-{victim} killed")

        at(0.3)
        log("fault: kill -9 cp-a (restarted in 5 s)")
        c.procs["cp-a"].kill9()
        time.sleep(5)
        c.start_replica("cp-a")
        self.done.append("cp-a killed")

        at(0.45)
        log("fault: Redis crashes (kill -9, back in 3 s)")
        c.procs["redis"].kill9()
        time.sleep(3)
        c.start_redis()
        self.done.append("redis restarted")

        at(0.6)
        log("fault: PostgreSQL crashes (immediate stop, back in 3 s)")
        c.stop_postgres(immediate=True)
        time.sleep(3)
        c.start_postgres()
        self.done.append("postgres restarted")

        at(0.75)
        log("fault: kill -9 cp-b (restarted in 5 s)")
        c.procs["cp-b"].kill9()
        time.sleep(5)
        c.start_replica("cp-b")
        self.done.append("cp-b killed")


# ---- a webhook channel's receiving end --------------------------------------------

# The event a successful lifecycle call's answer implies.
ACTION_EVENTS = {"pause": "capsule.paused", "resume": "capsule.running"}

CHANNEL_EVENTS = (
    "capsule.created", "capsule.running", "capsule.paused", "capsule.hibernated",
    "capsule.destroyed", "capsule.failed", "template.snapshot.created",
    "template.snapshot.deleted",
)


class Receiver:
    """A webhook endpoint on loopback that records every delivery it is sent."""

    def __init__(self):
        self.lock = threading.Lock()
        self.attempts = Counter()  # X-Wrenn-Delivery -> deliveries of it
        self.events = Counter()  # (event, resource id) -> distinct deliveries of it
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    p = json.loads(body)
                    key = (p["event"], p["resource"]["id"])
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                    self.end_headers()
                    return
                with receiver.lock:
                    delivery = self.headers.get("X-Wrenn-Delivery")
                    if not receiver.attempts[delivery]:
                        receiver.events[key] += 1
                    receiver.attempts[delivery] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def subscribe(self, cluster):
        r = cluster.admin().post(
            "/v1/channels",
            json={"name": "soak", "provider": "webhook", "config": {"url": self.url},
                  "events": list(CHANNEL_EVENTS)},
        )
        r.raise_for_status()

    def check(self, cluster, tally):
        """Every platform event of the stream reached the channel (after the backlog
        drained); a delivery repeated after a replica died keeps its id."""
        lines = cluster.redis("XRANGE", "wrenn:events", "-", "+").splitlines()
        expected = Counter()
        for i in range(0, len(lines) - 2, 3):
            p = json.loads(lines[i + 2])["payload"]
            if p.get("event") in CHANNEL_EVENTS:
                expected[(p["event"], p["resource"]["id"])] += 1

        # What the API's answers said happened must be there too, whether or not it
        # reached the stream (an event lost on its way to Redis is lost all the same).
        with tally.lock:
            said = Counter(tally.said)
        expected |= said

        def missing():
            with self.lock:
                return expected - self.events

        try:
            wait("every event delivered to the webhook", lambda: not missing(), 60, 1)
        except TimeoutError:
            for key, n in sorted(missing().items())[:20]:
                tally.problem("events", f"{n} x {key} never delivered to the webhook")
        with self.lock:
            repeats = sum(n - 1 for n in self.attempts.values() if n > 1)
        log(
            f"webhook: {sum(expected.values())} events expected ({sum(said.values())} "
            f"implied by API answers), "
            f"{sum(self.events.values())} delivered, {repeats} delivered again (same id)"
        )


# ---- what the hosts run --------------------------------------------------------------


class Hosts:
    """The hosts' capsules as the kernel sees them."""

    def __init__(self, cluster):
        self.c = cluster
        self.parents = {n: a["cgroup_parent"] for n, a in cluster.state["agents"].items()}
        self.host_of = {a["host_id"]: n for n, a in cluster.state["agents"].items()}

    def netns(self):
        d = Path("/run/netns")
        return {p.name[len("wrenn-"):] for p in d.iterdir()} if d.is_dir() else set()

    def cgroups(self, n):
        """Sandbox id -> freezer state of agent n's capsule cgroups (any hierarchy)."""
        found = {}
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            parent = hierarchy / self.parents[n]
            if not parent.is_dir():
                continue
            for d in parent.iterdir():
                if d.is_dir():
                    state = d / "freezer.state"
                    found.setdefault(d.name, None)
                    if state.exists():
                        found[d.name] = state.read_text().strip()
        return found

    def processes(self):
        """Sandbox id -> pids of processes in an agent's capsule cgroups."""
        owners = {}
        wanted = {f"/{p}/": p for p in self.parents.values()}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                text = (proc / "cgroup").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                path = line.split(":", 2)[2] + "/"
                for prefix in wanted:
                    if path.startswith(prefix):
                        cid = path[len(prefix):].split("/")[0]
                        if cid:
                            owners.setdefault(cid, set()).add(int(proc.name))
        return owners

    def dirs(self, n, sub):
        d = self.c.dir / f"agent-{n}" / sub
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def template_dirs(self, n):
        teams = self.c.dir / f"agent-{n}" / "images" / "teams"
        if not teams.is_dir():
            return set()
        return {f"{t.name}/{d.name}" for t in teams.iterdir() for d in t.iterdir()}

    def mounts(self):
        root = str(self.c.dir)
        out = []
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4]
            if point.startswith(root):
                out.append(point)
        return out

    def loop_devices(self):
        out = []
        for dev in Path("/sys/block").glob("loop*"):
            backing = dev / "loop" / "backing_file"
            if backing.exists() and backing.read_text().strip().startswith(str(self.c.dir)):
                out.append(f"{dev.name} -> {backing.read_text().strip()}")
        return out


def check_rows_against_hosts(cluster, hosts, tally):
    """Each capsule row against its host: status vs cgroup, freezer, processes, netns."""
    rows = [
        line.split("\t")
        for line in cluster.psql(
            "SELECT id, status, coalesce(host_id::text, '') FROM sandboxes"
        ).splitlines()
        if line
    ]
    netns, procs = hosts.netns(), hosts.processes()
    cgroups = {n: hosts.cgroups(n) for n in hosts.parents}
    sandbox_dirs = {n: hosts.dirs(n, "sandboxes") for n in hosts.parents}
    snapshot_dirs = {n: hosts.dirs(n, "snapshots") for n in hosts.parents}
    claimed = set()
    for uid, status, host_uid in rows:
        cid = wire_id("cl-", uid)
        n = hosts.host_of.get(wire_id("host-", host_uid)) if host_uid else None
        runs = n is not None and cid in cgroups[n] and bool(procs.get(cid))
        wrong = None
        if status in UNSETTLED:
            continue  # counted as stuck
        if status in ("running", "paused"):
            claimed.add(cid)
            want = "THAWED" if status == "running" else "FROZEN"
            if not runs:
                wrong = "its host runs no such capsule"
            elif cgroups[n][cid] not in (None, want):
                wrong = f"its freezer is {cgroups[n][cid]}"
            elif cid not in netns:
                wrong = "it has no network namespace"
        elif status == "hibernated":
            claimed.add(cid)
            if runs or cid in netns:
                wrong = "it still runs"
            elif n is None or (cid not in snapshot_dirs[n] and cid not in sandbox_dirs[n]):
                wrong = "its host keeps nothing of it"
        elif runs or cid in netns:
            wrong = "it still runs"
        if wrong:
            tally.problem("contradictory", f"{cid} is {status} on agent-{n} but {wrong}")
    for n, found in cgroups.items():
        for cid in found:
            if cid not in claimed and procs.get(cid):
                tally.problem("contradictory", f"agent-{n} runs {cid}, which no live row claims")


def check_stuck(cluster, tally):
    """Nothing transient, nor missing once every host is back."""
    stuck = cluster.psql(
        "SELECT id::text || ' ' || status FROM sandboxes WHERE status IN "
        "('pending','starting','resuming','pausing','stopping','snapshotting','missing')"
    )
    for line in filter(None, stuck.splitlines()):
        uid, status = line.split(" ", 1)
        tally.problem("stuck", f"{wire_id('cl-', uid)} {status}")


def event_backlog(cluster):
    """What each consumer group of each event stream has not had delivered and acked."""
    backlog = []
    for stream in SANDBOX_STREAMS:
        if cluster.redis("EXISTS", stream) != "1":
            continue
        raw = cluster.redis("XINFO", "GROUPS", stream).splitlines()
        # redis-cli prints each group as alternating field and value lines.
        groups, cur = [], None
        for i in range(0, len(raw) - 1, 2):
            if raw[i] == "name":
                cur = {}
                groups.append(cur)
            cur[raw[i]] = raw[i + 1]
        for g in groups:
            if g.get("pending") != "0" or g.get("lag") not in ("0", None):
                backlog.append(
                    f"{stream} group {g['name']}: pending {g.get('pending')}, lag {g.get('lag')}"
                )
    return backlog


def check_events(cluster, tally):
    """Entries a killed replica had read but not acked are claimed by the other after
    the claim timeout (60 s for sandbox events, WRENN_CHANNELS_CLAIM_AFTER_MS for
    platform events); nothing may be left once that has passed."""
    try:
        wait("every event delivered and acknowledged", lambda: not event_backlog(cluster), 120, 2)
    except TimeoutError:
        for line in event_backlog(cluster):
            tally.problem("events", line)


def wait_settled(cluster, deadline):
    def quiet():
        n = cluster.psql(
            "SELECT count(*) FROM sandboxes WHERE status IN "
            "('pending','starting','resuming','pausing','stopping','snapshotting','missing')"
        )
        return n == "0"

    try:
        wait("no capsule in a transient status", quiet, deadline, 1)
    except TimeoutError:
        pass


def final_checks(cluster, tally, held, snapshots, destroying):
    hosts = Hosts(cluster)
    api = Api(cluster, 0)
    log("waiting for every host to be online")
    wait("every host online", cluster.hosts_online, 120, 1)
    log(f"waiting up to {SETTLE} s for the monitor to settle what faults left")
    wait_settled(cluster, SETTLE)
    check_stuck(cluster, tally)
    check_rows_against_hosts(cluster, hosts, tally)

    for cid in destroying:
        s = api.settle(cid)
        if s not in ("stopped", "error"):
            tally.problem("lost", f"capsule {cid}, destroyed by a client, is {s} at the end")
    log(f"reading back the files of {len(held)} live capsules")
    for cid, files in list(held.items()):
        status = api.settle(cid)
        if status in ("paused", "hibernated"):
            api.call("POST", f"/v1/capsules/{cid}/resume")
            status = api.settle(cid)
        if status != "running":
            tally.problem("lost", f"capsule {cid} held by a client is {status} at the end")
            continue
        for path, data in files.items():
            r = api.call("POST", f"/v1/capsules/{cid}/files/read", json={"path": path})
            if r.status_code != 200 or r.content != data:
                tally.problem("corrupted", f"{cid} {path} at the end: {r.status_code}")

    log("destroying every capsule and snapshot")
    ids = {c["id"] for c in api.list() if c["status"] not in ("stopped",)}
    for cid in ids | set(held):
        api.call("DELETE", f"/v1/capsules/{cid}")
    for cid in ids | set(held):
        s = api.settle(cid)
        if s not in ("stopped", "error", None):
            tally.problem("leaked", f"capsule {cid} is {s} after destroy")
    for name in snapshots:
        r = api.call("DELETE", f"/v1/snapshots/{name}")
        if r.status_code not in (204, 404):
            tally.problem("leaked", f"snapshot {name}: delete answered {r.status_code} {r.text[:200]}")
    # Destroys finish removing disks in the background.
    def clean():
        return not hosts.netns() and not hosts.processes() and all(
            not hosts.cgroups(n) and not hosts.dirs(n, "sandboxes") and not hosts.dirs(n, "removing")
            and not hosts.dirs(n, "snapshots") and not hosts.template_dirs(n)
            for n in hosts.parents
        )

    try:
        wait("the hosts are clean", clean, 60, 1)
    except TimeoutError:
        pass
    for cid in hosts.netns():
        tally.problem("leaked", f"network namespace wrenn-{cid}")
    for cid, pids in hosts.processes().items():
        tally.problem("leaked", f"processes {sorted(pids)} of capsule {cid}")
    for n in hosts.parents:
        for cid in hosts.cgroups(n):
            tally.problem("leaked", f"agent-{n} cgroup {cid}")
        for sub in ("sandboxes", "snapshots", "removing"):
            for d in hosts.dirs(n, sub):
                tally.problem("leaked", f"agent-{n} {sub}/{d}")
        for d in hosts.template_dirs(n):
            tally.problem("leaked", f"agent-{n} template directory {d}")
    for m in hosts.mounts():
        if "/disks/" not in m:
            tally.problem("leaked", f"mount {m}")
    check_stuck(cluster, tally)
    check_events(cluster, tally)
    return hosts


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument(
        "--rate", type=float, default=3.0,
        help="operations per second at most, so that the faults land spread over the run",
    )
    parser.add_argument("--dir", help="cluster directory (default: a new temporary one)")
    args = parser.parse_args()

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="wrenn-soak-"))
    cluster = Cluster(workdir)
    tally = Tally(args.ops, args.rate)
    held, snapshots, destroying = {}, set(), set()
    started = time.time()
    hosts = None
    try:
        log(f"starting the cluster in {workdir}")
        cluster.up()
        receiver = Receiver()
        receiver.subscribe(cluster)
        log(f"cluster up in {time.time() - started:.0f} s; {args.clients} clients, {args.ops} operations")
        tally.started = time.time()
        faults = Faults(cluster, tally, rounds=max(1, args.ops // 500))
        faults.start()
        clients = [Client(n, cluster, tally, held, snapshots, destroying) for n in range(args.clients)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        faults.join()
        if faults.error:
            tally.problem("harness", faults.error)
        log(f"load done in {time.time() - started:.0f} s; faults: {', '.join(faults.done)}")
        log("outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(tally.outcomes.items())))
        hosts = final_checks(cluster, tally, held, snapshots, destroying)
        receiver.check(cluster, tally)
    except Exception:  # noqa: BLE001
        tally.problem("harness", traceback.format_exc())
    finally:
        ok = not tally.problems
        if not ok:
            cluster.dump_logs(40)
        cluster.down()
        if hosts is not None:
            for m in hosts.mounts():
                tally.problem("leaked", f"mount after the cluster stopped: {m}")
            for d in hosts.loop_devices():
                tally.problem("leaked", f"loop device after the cluster stopped: {d}")
    p = tally.problems
    if p:
        print("\n".join(tally.details[:100]))
        print(f"logs and state: {workdir}")
    elif not args.dir and not any(
        line.split()[4].startswith(str(workdir))
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
    ):
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"soak: ops={tally.ops} lost={p['lost']} contradictory={p['contradictory']} "
        f"stuck={p['stuck']} leaked={p['leaked']} corrupted={p['corrupted']}"
        + (f" events={p['events']}" if p["events"] else "")
        + (f" harness={p['harness']}" if p["harness"] else "")
        + f" ({time.time() - started:.0f} s)"
    )
    sys.exit(1 if p else 0)


if __name__ == "__main__":
    main()

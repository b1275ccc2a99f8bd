"""The published Python SDK (wrenn 0.3.0) driving `wrenn dev`, unchanged.

Run by tests/sdk/run.sh, which starts `wrenn dev` and exports WRENN_BASE_URL and
WRENN_API_KEY before calling pytest.
"""

import time
import uuid

import pytest
from wrenn import Capsule
from wrenn.exceptions import WrennConflictError


def wait_status(capsule_id, want, timeout=30.0):
    deadline = time.time() + timeout
    status = None
    while time.time() < deadline:
        status = str(Capsule.get_info(capsule_id).status)
        if status.endswith(want):
            return
        time.sleep(0.1)
    raise AssertionError(f"capsule {capsule_id} stayed {status}, wanted {want}")


def test_list_is_a_list():
    assert isinstance(Capsule.list(), list)


def test_a_new_capsule_takes_commands_at_once_without_waiting():
    # `Capsule()` returns when the create call answers; the create call answers once
    # the capsule runs, so the first command needs no wait (and no retry).
    c = Capsule()
    try:
        assert str(c.info.status).endswith("running")
        assert c.commands.run("echo ready").stdout == "ready\n"
    finally:
        c.destroy()


def test_create_waits_until_running(capsule):
    info = capsule.get_info()
    assert str(info.status).endswith("running")
    assert info.id.startswith("cl-")
    assert any(c.id == capsule.capsule_id for c in Capsule.list())


def test_commands_report_stdout_stderr_and_exit_codes(capsule):
    r = capsule.commands.run("echo hello; echo oops >&2; exit 3")
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"
    assert r.exit_code == 3
    assert capsule.commands.run("true").exit_code == 0


def test_commands_honour_envs_and_cwd(capsule):
    r = capsule.commands.run("echo $GREETING; pwd", envs={"GREETING": "hi"}, cwd="/tmp")
    assert r.stdout == "hi\n/tmp\n"


def test_the_default_capsule_is_debian_as_wrenn_user(capsule):
    r = capsule.commands.run("id -un; pwd; echo $HOME; . /etc/os-release; echo $ID")
    assert r.stdout == "wrenn-user\n/home/wrenn-user\n/home/wrenn-user\ndebian\n"
    assert capsule.commands.run("sudo -n true").exit_code == 0
    assert capsule.commands.run("sudo -n id -u").stdout == "0\n"
    r = capsule.commands.run("git --version && python3 --version")
    assert r.exit_code == 0 and "git version" in r.stdout and "Python 3" in r.stdout


def test_git_and_python_work_in_the_home(capsule):
    script = (
        "git init -q repo && cd repo && git config user.email a@b && git config user.name a"
        " && echo x > f && git add f && git commit -qm one && git log --format=%s"
        " && python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'print(6*7)'"
    )
    # `python3 -m venv` installs pip (seconds natively, ~a minute in a VM under TCG).
    r = capsule.commands.run(script, timeout=180)
    assert (r.exit_code, r.stdout) == (0, "one\n42\n"), r.stderr


def test_apt_get_install_works_with_sudo_and_no_update_first(capsule):
    r = capsule.commands.run(
        "sudo -n apt-get install -y -q tree >/dev/null && tree --version", timeout=300
    )
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("tree v")


def test_background_commands_can_be_listed_and_killed(capsule):
    handle = capsule.commands.run("sleep 300", background=True, tag="sleeper")
    assert handle.pid > 0
    procs = capsule.commands.list()
    assert any(p.pid == handle.pid for p in procs)
    capsule.commands.kill(handle.pid)
    deadline = time.time() + 10
    while time.time() < deadline and any(p.pid == handle.pid for p in capsule.commands.list()):
        time.sleep(0.1)
    assert not any(p.pid == handle.pid for p in capsule.commands.list())


def test_files_round_trip(capsule):
    capsule.files.write("/tmp/sdk/hello.txt", "hello from the sdk")
    assert capsule.files.read("/tmp/sdk/hello.txt") == "hello from the sdk"
    names = [e.name for e in capsule.files.list("/tmp/sdk")]
    assert "hello.txt" in names
    entry = capsule.files.make_dir("/tmp/sdk/sub")
    assert entry.name == "sub"
    assert capsule.files.exists("/tmp/sdk/sub")
    capsule.files.remove("/tmp/sdk/sub")
    assert not capsule.files.exists("/tmp/sdk/sub")


def test_binary_upload_and_download_stream(capsule):
    blob = bytes(range(256)) * 4096  # 1 MiB
    capsule.files.upload_stream("/tmp/blob.bin", iter([blob[i : i + 65536] for i in range(0, len(blob), 65536)]))
    got = b"".join(capsule.files.download_stream("/tmp/blob.bin"))
    assert got == blob
    assert capsule.files.read_bytes("/tmp/blob.bin") == blob


def test_pause_and_resume_keep_processes_alive(capsule):
    capsule.commands.run("sleep 1000", background=True, tag="survivor")
    capsule.pause()
    wait_status(capsule.capsule_id, "paused")
    with pytest.raises(WrennConflictError):
        capsule.commands.run("true")
    capsule.resume()
    wait_status(capsule.capsule_id, "running")
    assert any(p.tag == "survivor" for p in capsule.commands.list())
    assert capsule.commands.run("echo back").stdout == "back\n"


def test_snapshot_becomes_a_template_for_new_capsules(capsule):
    capsule.files.write("/home/wrenn-user/state.txt", "kept in the snapshot")
    name = f"sdk-{uuid.uuid4().hex[:8]}"
    template = capsule.create_snapshot(name=name)
    assert template.name == name
    child = Capsule(template=name, wait=True)
    try:
        assert child.files.read("/home/wrenn-user/state.txt") == "kept in the snapshot"
    finally:
        child.destroy()


def test_pty_runs_an_interactive_shell(capsule):
    seen = b""
    with capsule.pty(cmd="/bin/sh") as term:
        term.write(b"echo pty-$((40+2))\n")
        deadline = time.time() + 15
        for event in term:
            if event.data:
                seen += event.data
            if b"pty-42" in seen or time.time() > deadline:
                break
        term.kill()
    assert b"pty-42" in seen


def test_destroy_leaves_the_capsule_stopped():
    c = Capsule(wait=True)
    c.destroy()
    wait_status(c.capsule_id, "stopped")
    assert not any(x.id == c.capsule_id for x in Capsule.list())


# --- code_runner: the shipped `code-runner-beta` template (Jupyter behind the proxy) ---

# A 1x1 PNG.
TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def _admin_client():
    """An HTTP client for the admin API, logged in as the `wrenn dev` admin."""
    import json
    import os

    import httpx

    creds = json.load(open(os.environ["WRENN_DEV_CREDENTIALS"]))
    base = os.environ["WRENN_BASE_URL"]
    token = httpx.post(
        f"{base}/v1/auth/login",
        json={"email": creds["email"], "password": creds["password"]},
    ).json()["token"]
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"})


@pytest.fixture(scope="module")
def code_runner_template():
    """Waits (generously: a pip install) for `wrenn dev` to build code-runner-beta."""
    with _admin_client() as admin:
        deadline = time.time() + 1500
        build = None
        while time.time() < deadline:
            builds = admin.get("/v1/admin/builds").json()
            mine = [b for b in builds if b["name"] == "code-runner-beta"]
            assert mine, "wrenn dev queued no build of code-runner-beta"
            build = mine[0]
            if build["status"] == "success":
                return build
            assert build["status"] in ("pending", "running"), (
                f"building code-runner-beta {build['status']}: {build.get('error')}\n"
                + "\n".join(build["logs"][-40:])
            )
            time.sleep(2)
        raise AssertionError(f"code-runner-beta not built in time: {build}")


@pytest.fixture(scope="module")
def runner(code_runner_template):
    from wrenn.code_runner import Capsule as CodeRunner

    c = CodeRunner()
    try:
        yield c
    finally:
        c.destroy()


def test_code_runner_template_builds_with_logs_and_steps(code_runner_template):
    b = code_runner_template
    assert b["current_step"] == b["total_steps"] > 0
    assert any("Successfully installed" in line for line in b["logs"]), b["logs"][-20:]
    assert any("healthcheck passed" in line for line in b["logs"])


def test_code_runner_keeps_state_between_calls_and_reports_stdout(runner):
    assert runner.run_code("x = 41").error is None
    result = runner.run_code("x + 1")
    assert result.error is None
    assert result.text == "42"
    printed = runner.run_code("print('hello', x)")
    assert "".join(printed.logs.stdout) == "hello 41\n"


def test_code_runner_reports_exceptions(runner):
    result = runner.run_code("1 / 0")
    assert result.error is not None
    assert result.error.name == "ZeroDivisionError"
    assert "division by zero" in result.error.value
    # The kernel survives the error.
    assert runner.run_code("'still here'").text == "'still here'"


def test_code_runner_returns_rich_results(runner):
    result = runner.run_code(
        "import base64\n"
        "from IPython.display import Image, display\n"
        f"display(Image(data=base64.b64decode('{TINY_PNG}')))\n"
        "{'answer': 42}"
    )
    assert result.error is None
    images = [r for r in result.results if r.png]
    assert images and images[0].png.strip() == TINY_PNG
    main = [r for r in result.results if r.is_main_result]
    assert main and main[0].text == "{'answer': 42}"


def test_metrics_stay_readable_after_pause_and_destroy_and_team_stats_are_real():
    from wrenn import WrennClient

    with WrennClient() as wrenn:
        c = Capsule(wait=True)
        try:
            c.commands.run("timeout 3 sh -c 'while :; do :; done'; true")
            deadline = time.time() + 20
            running = []
            while len(running) < 3 and time.time() < deadline:
                running = wrenn.capsules.metrics(c.capsule_id, range="5m").points
                time.sleep(0.5)
            assert len(running) >= 3, running
            assert max(p.cpu_pct for p in running) > 10, running
            assert all(p.mem_bytes > 0 for p in running)
            # The team's chart is made of the sampler's snapshots (every 10 s).
            deadline = time.time() + 30
            stats = wrenn.capsules.stats(range="5m")
            while max(stats.series.vcpus) < 1 and time.time() < deadline:
                time.sleep(1)
                stats = wrenn.capsules.stats(range="5m")
            assert max(stats.series.vcpus) >= 1, stats
            assert stats.current.running_count >= 1 and stats.peaks.vcpus >= 1, stats

            wrenn.capsules.pause(c.capsule_id)
            wait_status(c.capsule_id, "paused")
            paused = wrenn.capsules.metrics(c.capsule_id, range="5m").points
            assert {p.timestamp_unix for p in running} <= {p.timestamp_unix for p in paused}
        finally:
            c.destroy()
        stopped = wrenn.capsules.metrics(c.capsule_id, range="10m").points
        assert len(stopped) >= len(running), "a destroyed capsule keeps its samples"

        stats = wrenn.capsules.stats(range="5m")
        assert len(stats.series.labels) == len(stats.series.vcpus) > 0
        usage = wrenn.capsules.usage()
        assert usage.points[-1].cpu_minutes >= 0
        assert sum(p.ram_mb_minutes for p in usage.points) > 0, usage.points[-5:]

"""The default capsule environment, as the published SDK (wrenn 0.3.0) expects it.

The SDK's own integration suites assume the default template runs commands as
`wrenn-user` in `/home/wrenn-user`, with passwordless sudo, git, python3 and a
working `apt-get install`; and a capsule is a Debian system of its own, not a view
of the host. Run by tests/sdk/run.sh against `wrenn dev`.
"""

import os
import socket
import uuid



def test_sudo_needs_no_password(capsule):
    r = capsule.commands.run("sudo -n id -u && sudo -n touch /root/made-by-sudo && sudo -n ls /root")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.split("\n")[0] == "0"
    assert "made-by-sudo" in r.stdout


def test_python3_and_pip_are_there(capsule):
    r = capsule.commands.run("python3 -c 'import sys; print(sys.version_info[0])' && python3 -m pip --version")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.startswith("3\n")


def test_git_works_through_the_sdk(capsule):
    repo = "/home/wrenn-user/repo"
    capsule.git.init(repo, initial_branch="main")
    capsule.git.configure_user("Wrenn Test", "test@wrenn.local")
    capsule.files.write(f"{repo}/README.md", "hello\n")
    capsule.git.add(all=True, cwd=repo)
    capsule.git.commit("first", cwd=repo)
    status = capsule.git.status(cwd=repo)
    assert status.branch == "main"
    assert status.files == []
    log = capsule.commands.run("git log --format=%s", cwd=repo)
    assert log.stdout == "first\n"


def test_the_capsule_is_debian_and_not_the_host(capsule):
    os_release = capsule.files.read("/etc/os-release")
    assert "Debian" in os_release
    assert capsule.commands.run("hostname").stdout.strip() != socket.gethostname()
    # A file made on the host just now is nowhere inside, by exec or the files API.
    marker = f"wrenn-host-marker-{uuid.uuid4().hex}"
    path = os.path.join("/root", marker)
    with open(path, "w") as f:
        f.write("host secret\n")
    try:
        assert not capsule.files.exists(path)
        found = capsule.commands.run(f"sudo -n find / -xdev -name {marker} 2>/dev/null; true")
        assert marker not in found.stdout
        assert marker not in capsule.commands.run("sudo -n cat /proc/self/mountinfo").stdout
    finally:
        os.remove(path)


def test_names_resolve_through_the_capsules_forwarder(capsule):
    r = capsule.commands.run("getent hosts deb.debian.org", timeout=30)
    assert r.exit_code == 0 and r.stdout.strip(), r.stderr
    gateway = capsule.commands.run("ip -4 route show default").stdout.split()[2]
    assert f"nameserver {gateway}" in capsule.files.read("/etc/resolv.conf")

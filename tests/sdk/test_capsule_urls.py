"""Capsule URLs from the published SDK: `capsule.get_url(port)` reaches a server inside
the capsule through the control plane's proxy (`http://{port}-{id}.localhost:PORT`,
WRENN_PROXY_DOMAIN as `wrenn dev` prints it). The names must resolve on this machine
(nss-myhostname; `.ci/run` enables it).
"""

import os
import socket
import time

import httpx
from wrenn import Capsule

KEY = {"X-API-Key": os.environ.get("WRENN_API_KEY", "")}


def get_when_up(url, timeout=20.0, **kw):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            r = httpx.get(url, timeout=10, **kw)
            if r.status_code == 200:
                return r
            last = r
        except httpx.TransportError as e:
            last = e
        time.sleep(0.2)
    raise AssertionError(f"{url} never answered 200: {last!r}")


def test_capsule_url_names_resolve_here():
    host = "probe.localhost"
    assert socket.getaddrinfo(host, 80), f"{host} must resolve (enable nss-myhostname)"


def test_get_url_reaches_a_server_in_the_capsule(capsule):
    capsule.commands.run("mkdir -p /tmp/site && echo hello-from-inside > /tmp/site/index.html")
    capsule.commands.run("python3 -m http.server 8000 -d /tmp/site", background=True)
    url = capsule.get_url(8000)
    assert url.startswith(f"http://8000-{capsule.capsule_id}.")
    r = get_when_up(url + "/index.html", headers=KEY)
    assert r.text == "hello-from-inside\n"


def test_get_url_reaches_a_server_bound_to_the_capsule_loopback(capsule):
    capsule.commands.run(
        "python3 -m http.server 8001 --bind 127.0.0.1 -d /etc", background=True
    )
    r = get_when_up(capsule.get_url(8001) + "/hostname", headers=KEY)
    assert r.text.strip()


def test_capsule_urls_need_a_credential_and_refuse_other_capsules(capsule):
    capsule.commands.run("python3 -m http.server 8000 -d /tmp", background=True)
    url = capsule.get_url(8000)
    get_when_up(url, headers=KEY)
    assert httpx.get(url, timeout=10).status_code == 401
    unknown = url.replace(capsule.capsule_id, "cl-" + "0" * 24 + "1")
    assert httpx.get(unknown, headers=KEY, timeout=10).status_code == 404


def test_a_paused_capsule_resumes_on_a_request(capsule):
    capsule.commands.run("mkdir -p /tmp/s && echo still-here > /tmp/s/f", background=False)
    capsule.commands.run("python3 -m http.server 8000 -d /tmp/s", background=True)
    url = capsule.get_url(8000) + "/f"
    get_when_up(url, headers=KEY)
    capsule.pause()
    r = httpx.get(url, headers=KEY, timeout=60)
    assert r.status_code == 200 and r.text == "still-here\n"
    assert str(Capsule.get_info(capsule.capsule_id).status).endswith("running")

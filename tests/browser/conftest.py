"""Fixtures of the dashboard's browser tests (run by tests/browser/run.sh against
`wrenn dev`): Debian's Chromium under Playwright, the development admin's credentials,
an API client with the admin team's API key, and capsules made through the API."""

import json
import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

BASE_URL = os.environ.get("WRENN_BASE_URL", "http://127.0.0.1:8000").rstrip("/")
SCREENSHOTS = Path(os.environ.get("WRENN_SCREENSHOTS", "target/browser-screenshots"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keeps each phase's report on the test item, for the screenshot on failure."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)


@pytest.fixture(scope="session")
def creds() -> dict:
    """The development admin (`dev-credentials.json` of `wrenn dev`)."""
    return json.loads(Path(os.environ["WRENN_DEV_CREDENTIALS"]).read_text())


@pytest.fixture(scope="session")
def pw():
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(pw):
    """Debian's Chromium (never a downloaded one)."""
    b = pw.chromium.launch(
        executable_path=os.environ.get("WRENN_CHROMIUM", "/usr/bin/chromium"),
        headless=True,
        # As root (CI) Chromium refuses its own sandbox.
        args=["--no-sandbox", "--disable-dev-shm-usage"],
    )
    yield b
    b.close()


@pytest.fixture(scope="session")
def api(pw, creds):
    """HTTP client of the API with the admin team's API key."""
    ctx = pw.request.new_context(base_url=BASE_URL, extra_http_headers={"X-API-Key": creds["api_key"]})
    yield ctx
    ctx.dispose()


@pytest.fixture
def page(browser, request):
    """A fresh browser context and page (empty cache and storage); a screenshot of
    the page is saved when the test fails."""
    context = browser.new_context(base_url=BASE_URL, accept_downloads=True, viewport={"width": 1400, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(15_000)
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)
        try:
            pg.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
        except Exception as e:  # the page may be gone; the failure itself matters more
            print(f"screenshot failed: {e}")
    context.close()


def sign_in(page: Page, email: str, password: str) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login"))
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/capsules$"))


@pytest.fixture
def signed_in(page, creds) -> Page:
    """The page, signed in as the development admin."""
    sign_in(page, creds["email"], creds["password"])
    return page


def destroy_all(page: Page) -> None:
    """Destroys every capsule of the page's signed-in team (cleanup of a test that made
    them from the dashboard)."""
    page.evaluate(
        """async () => {
            const token = sessionStorage.getItem('wrenn.session');
            if (!token) return;
            const headers = { Authorization: `Bearer ${token}` };
            const list = await (await fetch('/v1/capsules', { headers })).json();
            await Promise.all(list.map((c) => fetch(`/v1/capsules/${c.id}`, { method: 'DELETE', headers })));
        }"""
    )


def wait_status(api, capsule_id: str, want: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    body = {}
    while time.monotonic() < deadline:
        res = api.get(f"/v1/capsules/{capsule_id}")
        assert res.ok, res.text()
        body = res.json()
        if body["status"] == want:
            return body
        if body["status"] == "error":
            raise AssertionError(f"capsule {capsule_id} failed: {body}")
        time.sleep(0.3)
    raise AssertionError(f"capsule {capsule_id} is {body.get('status')}, not {want}")


@pytest.fixture
def capsule(api):
    """A running capsule of the admin's team, destroyed after the test."""
    res = api.post("/v1/capsules", data={"timeout_sec": 0})
    assert res.status in (201, 202), res.text()
    c = res.json()
    wait_status(api, c["id"], "running")
    yield c
    api.delete(f"/v1/capsules/{c['id']}")

#!/usr/bin/env python3
"""Dashboard benchmark: the first load with a cold cache, and a list of 1,000 capsules.

    cargo build --release -p wrenn --bin wrenn
    tests/browser/run.sh -k nothing        # makes the venv target/browser-venv once
    target/browser-venv/bin/python scripts/bench-dashboard.py [--binary target/release/wrenn] [--loads 5]

Starts `wrenn dev` in a temporary directory on a free loopback port and drives Debian's
Chromium (Playwright, never a downloaded browser) against it. Reports:
  - first load: for `--loads` fresh browser contexts (empty cache), ms from the start of
    the navigation to the sign-in form on screen, and the bytes transferred (target:
    under 1 s on loopback);
  - 1,000 capsules: the capsule list answered with 1,000 rows (the browser's network
    layer answers `GET /v1/capsules`: what is measured is the page, not the API), rows
    rendered, and ms to render a jump to the end of the list and a filter (median of 20).
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "browser"))
from playwright.sync_api import expect, sync_playwright  # noqa: E402

from conftest import sign_in  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_load(browser, base):
    context = browser.new_context(base_url=base)
    try:
        page = context.new_page()
        page.goto("/", wait_until="commit")
        shown = page.wait_for_function(
            "() => document.querySelector('form button[type=submit]') ? performance.now() : null",
            polling="raf",
        ).json_value()
        page.wait_for_load_state("load")
        size = page.evaluate(
            "() => performance.getEntriesByType('resource').reduce((s, r) => s + r.transferSize,"
            " performance.getEntriesByType('navigation')[0].transferSize)"
        )
        return shown, size
    finally:
        context.close()


ROWS = [
    {
        "id": f"cl-{i:022d}",
        "status": ["running", "paused", "starting"][i % 3],
        "template": "minimal",
        "vcpus": 1,
        "memory_mb": 512,
        "timeout_sec": 0,
        "disk_size_mb": 20480,
        "created_at": f"2026-01-01T00:{i // 60 % 60:02d}:{i % 60:02d}Z",
        "last_updated": "2026-01-01T00:00:00Z",
    }
    for i in range(1000)
]

JUMP = """async (el) => {
    const t0 = performance.now();
    el.scrollTop = el.scrollTop > 0 ? 0 : el.scrollHeight;
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    return performance.now() - t0;
}"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default="target/release/wrenn")
    ap.add_argument("--loads", type=int, default=5)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as d:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "WRENN_DEV_BUILD_TEMPLATES": "0",
            "WRENN_IMAGE_CACHE": os.environ.get("WRENN_IMAGE_CACHE", "/var/cache/wrenn/test-images"),
        }
        dev = subprocess.Popen(
            [args.binary, "dev", "--dir", f"{d}/state", "--listen", f"127.0.0.1:{port}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            creds_file = Path(d) / "state" / "dev-credentials.json"
            deadline = time.time() + 120
            while not creds_file.exists():
                if time.time() > deadline or dev.poll() is not None:
                    sys.exit("wrenn dev did not start")
                time.sleep(0.2)
            time.sleep(0.5)
            creds = json.loads(creds_file.read_text())
            with sync_playwright() as pw:
                browser = pw.chromium.launch(
                    executable_path=os.environ.get("WRENN_CHROMIUM", "/usr/bin/chromium"),
                    args=["--no-sandbox", "--disable-dev-shm-usage"],
                )
                cold_load(browser, base)  # the server's first answers are not a user's
                loads = [cold_load(browser, base) for _ in range(args.loads)]
                times = sorted(t for t, _ in loads)
                print(
                    f"first load, cold cache ({args.loads} loads): sign-in form after "
                    f"median {statistics.median(times):.0f} ms (best {times[0]:.0f}, worst {times[-1]:.0f}); "
                    f"{loads[0][1]} bytes transferred (target: under 1,000 ms)"
                )

                page = browser.new_context(base_url=base).new_page()
                sign_in(page, creds["email"], creds["password"])
                page.route(
                    "**/v1/capsules",
                    lambda route: route.fulfill(json=ROWS)
                    if route.request.method == "GET"
                    else route.continue_(),
                )
                page.reload()
                expect(page.get_by_text("1000 capsules")).to_be_visible()
                rendered = page.locator(".capsule-row").count()
                jumps = [page.locator(".vlist").evaluate(JUMP) for _ in range(20)]
                filters = []
                for i in range(20):
                    t0 = time.perf_counter()
                    page.get_by_label("Filter capsules").fill(f"cl-{i * 37:022d}")
                    expect(page.locator(".capsule-row")).to_have_count(1)
                    filters.append((time.perf_counter() - t0) * 1000)
                    page.get_by_label("Filter capsules").fill("")
                print(
                    f"1,000 capsules: {rendered} rows rendered; a jump to the other end drawn in "
                    f"median {statistics.median(jumps):.1f} ms (worst {max(jumps):.1f}); a filter "
                    f"to one row shown in median {statistics.median(filters):.0f} ms"
                )
                browser.close()
        finally:
            dev.terminate()
            dev.wait(timeout=30)


if __name__ == "__main__":
    main()

"""The web dashboard as a person uses it, in headless Chromium against `wrenn dev`."""

import re
import time

from conftest import BASE_URL, destroy_all, sign_in, wait_status
from playwright.sync_api import expect


def test_the_first_load_needs_nothing_from_another_origin(browser):
    """A cold load (fresh context, empty cache) shows the sign-in form and requests
    nothing outside the control plane: no CDN, no web fonts. (How long it takes is
    measured by scripts/bench-dashboard.py.)"""
    context = browser.new_context(base_url=BASE_URL)
    try:
        page = context.new_page()
        foreign = []
        page.on("request", lambda r: foreign.append(r.url) if not r.url.startswith(BASE_URL) else None)
        page.goto("/")
        expect(page.locator("form button[type=submit]")).to_be_visible()
        page.wait_for_load_state("load")
        assert foreign == [], foreign
    finally:
        context.close()


def test_sign_in_errors_and_expired_session(page, creds):
    page.goto("/capsules")
    expect(page).to_have_url(re.compile(r"/login\?next=%2Fcapsules"))
    page.get_by_label("Email").fill(creds["email"])
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    # The API's 401 as a sentence, not a code.
    expect(page.get_by_role("alert")).to_contain_text(re.compile(r"password|email", re.I))
    page.get_by_label("Password").fill(creds["password"])
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/capsules$"))
    expect(page.get_by_role("heading", name="Capsules")).to_be_visible()
    expect(page.get_by_text("● live")).to_be_visible()

    # A token the server no longer accepts (here: a forged signature) sends the user
    # back to sign-in with a reason.
    page.evaluate(
        """() => {
            const [h, p] = sessionStorage.getItem('wrenn.session').split('.');
            sessionStorage.setItem('wrenn.session', `${h}.${p}.forged`);
        }"""
    )
    page.goto("/keys")
    expect(page).to_have_url(re.compile(r"/login"))
    expect(page.get_by_role("status")).to_contain_text("session has expired")


def test_live_status_changes_without_reload(signed_in, api, capsule):
    page = signed_in
    row = page.locator(f".capsule-row[data-id='{capsule['id']}']")
    expect(row.locator(".status")).to_have_attribute("data-status", "running")

    # A pause by someone else (the SDK, here the API) shows up by itself.
    res = api.post(f"/v1/capsules/{capsule['id']}/pause")
    assert res.ok, res.text()
    expect(row.locator(".status")).to_have_attribute("data-status", "paused", timeout=30_000)

    # A resume from the dashboard shows the transient status, then the settled one.
    page.evaluate(
        """(id) => {
            window.__seen = [];
            const record = () => {
                const el = document.querySelector(`.capsule-row[data-id='${id}'] .status`);
                if (el) window.__seen.push(el.dataset.status + ':' + el.dataset.kind);
            };
            new MutationObserver(record).observe(document.body, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-status'] });
        }""",
        capsule["id"],
    )
    row.get_by_role("button", name="Resume").click()
    expect(row.locator(".status")).to_have_attribute("data-status", "running", timeout=30_000)
    seen = page.evaluate("() => window.__seen")
    assert "resuming:transient" in seen, seen
    wait_status(api, capsule["id"], "running")


def test_terminal_runs_a_command(signed_in, capsule):
    page = signed_in
    page.locator(f".capsule-row[data-id='{capsule['id']}'] a").click()
    expect(page).to_have_url(re.compile(rf"/capsules/{capsule['id']}$"))
    expect(page.get_by_test_id("terminal-status")).to_contain_text("connected", timeout=20_000)
    page.get_by_test_id("terminal").click()
    page.keyboard.type("echo hi-$((40+2))")
    page.keyboard.press("Enter")
    expect(page.locator(".xterm-rows")).to_contain_text("hi-42", timeout=15_000)


def test_a_terminal_that_connects_leaves_the_keyboard_where_the_user_types(signed_in, capsule):
    """The terminal takes the keyboard when its shell starts only if nothing else has
    it: a snapshot name being typed while it connects stays in its field."""
    page = signed_in
    page.locator(f".capsule-row[data-id='{capsule['id']}'] a").click()
    name = page.get_by_label("Snapshot name")
    name.focus()
    expect(page.get_by_test_id("terminal-status")).to_contain_text("connected", timeout=20_000)
    page.keyboard.type("kept-name")
    expect(name).to_be_focused()
    expect(name).to_have_value("kept-name")


def test_file_upload_then_download(signed_in, capsule, tmp_path):
    page = signed_in
    page.goto(f"/capsules/{capsule['id']}?tab=files")
    expect(page.get_by_label("Path")).to_have_value("/home/wrenn-user")
    content = b"hello from the browser\n\x00\xff binary too\n"
    page.get_by_test_id("upload").set_input_files(
        files=[{"name": "greeting.bin", "mimeType": "application/octet-stream", "buffer": content}]
    )
    row = page.locator("tr[data-path='/home/wrenn-user/greeting.bin']")
    expect(row).to_be_visible()
    with page.expect_download() as info:
        row.get_by_role("button", name="Download").click()
    saved = tmp_path / "greeting.bin"
    info.value.save_as(saved)
    assert saved.read_bytes() == content

    page.get_by_label("New folder name").fill("made-here")
    page.get_by_role("button", name="New folder").click()
    folder = page.locator("tr[data-path='/home/wrenn-user/made-here']")
    expect(folder).to_be_visible()
    folder.get_by_role("button", name="Remove").click()
    folder.get_by_role("button", name="Remove?").click()
    expect(folder).to_have_count(0)


def test_api_key_is_shown_once_and_works(signed_in, pw):
    page = signed_in
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("from-the-browser")
    page.get_by_role("button", name="Create key").click()
    key = page.get_by_test_id("secret").inner_text().strip()
    assert key, "no key shown"
    expect(page.locator("table")).to_contain_text("from-the-browser")
    client = pw.request.new_context(base_url=BASE_URL, extra_http_headers={"X-API-Key": key})
    try:
        assert client.get("/v1/capsules").ok
    finally:
        client.dispose()
    page.reload()
    expect(page.locator("table")).to_contain_text("from-the-browser")
    expect(page.get_by_test_id("secret")).to_have_count(0)


def test_a_thousand_capsules_render_only_what_is_in_view(signed_in):
    """The list renders only what is in view: 1,000 capsules scroll and filter. The list
    answer is made in the browser (`page.route`): the team quota keeps `wrenn dev` far
    below 1,000 capsules, and what is checked is the page."""
    page = signed_in
    rows = [
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
    page.route("**/v1/capsules", lambda route: route.fulfill(json=rows) if route.request.method == "GET" else route.continue_())
    page.reload()
    expect(page.get_by_text("1000 capsules")).to_be_visible()
    rendered = page.locator(".capsule-row").count()
    assert 0 < rendered < 60, rendered
    # A jump to the end renders the last rows, still only a window of them. (How fast
    # is measured by scripts/bench-dashboard.py.)
    page.locator(".vlist").evaluate("(el) => { el.scrollTop = el.scrollHeight; }")
    expect(page.locator(".capsule-row[data-id='cl-0000000000000000000000']")).to_be_visible()
    assert page.locator(".capsule-row").count() < 60
    page.get_by_label("Filter capsules").fill("cl-0000000000000000000999")
    expect(page.locator(".capsule-row")).to_have_count(1)


def test_a_new_user_signs_up_and_drives_a_capsule(page):
    """Sign up (no SMTP: active at once), create a capsule from the form, snapshot it,
    find the snapshot among the templates, destroy the capsule; then a second team."""
    email = f"new-{int(time.time() * 1000)}@example.com"
    page.goto("/signup")
    page.get_by_label("Name").fill("New Person")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("a long enough password")
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/capsules$"))
    expect(page.get_by_text("No capsules yet")).to_be_visible()
    expect(page.get_by_text("Platform admin")).to_have_count(0)

    try:
        page.get_by_role("button", name="New capsule").click()
        page.get_by_role("button", name="Create", exact=True).click()
        row = page.locator(".capsule-row").first
        expect(row.locator(".status")).to_have_attribute("data-status", "running", timeout=30_000)
        capsule_id = row.get_attribute("data-id")

        snap = f"snap-{int(time.time())}"
        row.locator("a").click()
        page.get_by_label("Snapshot name").fill(snap)
        page.get_by_role("button", name="Snapshot", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text(f'"{snap}" created', timeout=60_000)
        page.get_by_role("link", name="Templates & snapshots").click()
        template_row = page.locator("tr", has_text=snap)
        expect(template_row).to_be_visible()
        template_row.get_by_role("button", name="Delete").click()
        template_row.get_by_role("button", name="Delete?").click()
        expect(template_row).to_have_count(0)

        page.get_by_role("link", name="Capsules", exact=True).click()
        row = page.locator(f".capsule-row[data-id='{capsule_id}']")
        row.get_by_role("button", name="Destroy").click()
        row.get_by_role("button", name="Destroy?").click()
        expect(row).to_have_count(0, timeout=30_000)

        # A second team: created, switched to, and back through the team selector.
        page.get_by_role("link", name="Team & members").click()
        page.get_by_label("New team").fill("Side project")
        page.get_by_role("button", name="Create and switch").click()
        expect(page.get_by_role("heading", name="Team: Side project")).to_be_visible()
        selector = page.get_by_label("Team", exact=True)
        expect(selector.locator("option")).to_have_count(2)
        selector.select_option(label="New Person's Team (owner)")
        expect(page).to_have_url(re.compile(r"/capsules$"))
        page.get_by_role("link", name="Team & members").click()
        expect(page.get_by_role("heading", name="Team: New Person's Team")).to_be_visible()
    finally:
        destroy_all(page)


def test_admin_builds_show_live_logs_and_hosts_get_a_token(signed_in):
    page = signed_in
    page.get_by_role("link", name="Builds", exact=True).click()
    page.get_by_label("Template name").fill(f"browser-{int(time.time())}")
    page.get_by_label("Recipe (one step a line)").fill("RUN echo first-$((0+1))\nRUN sleep 4; echo second-$((1+1))")
    page.get_by_role("button", name="Start build").click()
    expect(page).to_have_url(re.compile(r"/admin/builds/bld-"))
    logs = page.get_by_test_id("build-logs")
    # The first step's output shows while the build still runs.
    expect(logs).to_contain_text("first-1", timeout=30_000)
    assert "second-2" not in logs.inner_text()
    expect(page.locator("[data-status='success']")).to_be_visible(timeout=60_000)
    expect(logs).to_contain_text("second-2")

    page.get_by_role("link", name="Hosts").click()
    page.get_by_role("button", name="Add host").click()
    expect(page.get_by_test_id("secret")).not_to_be_empty()
    host_id = re.search(r"host-[0-9a-z]+", page.locator(".notice strong").inner_text()).group(0)
    expect(page.locator("tr", has_text=host_id)).to_contain_text("pending")


def test_members_and_roles(signed_in, pw, browser):
    """The admin adds an existing account to the team, makes it an admin, removes it."""
    email = f"member-{int(time.time() * 1000)}@example.com"
    anon = pw.request.new_context(base_url=BASE_URL)
    try:
        res = anon.post("/v1/auth/signup", data={"email": email, "password": "a long enough password", "name": "Member"})
        assert res.status == 201, res.text()
    finally:
        anon.dispose()
    page = signed_in
    page.get_by_role("link", name="Team & members").click()
    page.get_by_label("Add a member by email").fill("nobody-" + email)
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text("Add member:")
    page.get_by_label("Add a member by email").fill(email)
    page.get_by_role("button", name="Add", exact=True).click()
    row = page.locator("tr", has_text=email)
    expect(row).to_contain_text("member")
    row.get_by_label(f"Role of {email}").select_option("admin")
    expect(page.get_by_role("status")).to_contain_text(f"{email} is now admin")
    page.reload()
    expect(page.locator("tr", has_text=email).get_by_label(f"Role of {email}")).to_have_value("admin")

    # The member finds the team in the selector, acts in it, and leaves it.
    other = browser.new_context(base_url=BASE_URL)
    try:
        member = other.new_page()
        sign_in(member, email, "a long enough password")
        team = member.get_by_label("Team", exact=True)
        expect(team.locator("option")).to_have_count(2)
        team.select_option(label="Wrenn Admin's Team (admin)")
        member.get_by_role("link", name="Team & members").click()
        expect(member.get_by_role("heading", name="Team: Wrenn Admin's Team")).to_be_visible()
        expect(member.get_by_text("Your role here: admin")).to_be_visible()
        member.get_by_role("button", name="Leave this team").click()
        member.get_by_role("button", name="Really leave?").click()
        # Its token acted in that team: signing in again lands in the member's own.
        expect(member.get_by_role("status")).to_contain_text("You left the team")
        member.get_by_label("Email").fill(email)
        member.get_by_label("Password").fill("a long enough password")
        member.get_by_role("button", name="Sign in").click()
        expect(member).to_have_url(re.compile(r"/team$"))
        expect(member.get_by_role("heading", name="Team: Member's Team")).to_be_visible()
        expect(team.locator("option")).to_have_count(1)
    finally:
        other.close()
    page.reload()
    expect(page.locator("tr", has_text=email)).to_have_count(0)

    # Added again, and removed by the owner.
    page.get_by_label("Add a member by email").fill(email)
    page.get_by_role("button", name="Add", exact=True).click()
    row = page.locator("tr", has_text=email)
    row.get_by_role("button", name="Remove").click()
    row.get_by_role("button", name="Remove?").click()
    expect(page.locator("tr", has_text=email)).to_have_count(0)


def test_every_page_loads_without_errors(signed_in):
    """Each page reads the real API: none shows an error or throws."""
    page = signed_in
    thrown = []
    page.on("pageerror", lambda e: thrown.append(str(e)))
    pages = {
        "/templates": "Templates & snapshots",
        "/keys": "API keys",
        "/team": "Team: ",
        "/builds": "Template builds",
        "/audit": "Audit log",
        "/usage": "Usage",
        "/admin/hosts": "Hosts",
        "/admin/users": "Users",
        "/admin/teams": "Teams",
        "/admin/templates": "Platform templates",
        "/admin/builds": "Platform template builds",
        "/admin/audit": "Platform audit log",
    }
    for path, heading in pages.items():
        page.goto(path)
        expect(page.get_by_role("heading", level=1)).to_contain_text(heading)
        expect(page.locator("text=Loading…")).to_have_count(0)
        expect(page.get_by_role("alert")).to_have_count(0)
    page.goto("/admin/users")
    expect(page.locator("tr", has_text="admin@wrenn.local")).to_be_visible()
    page.goto("/nowhere")
    expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert thrown == []

import { describe as suite, expect, it } from "vitest";
import { errorFromResponse, networkError, describe } from "./errors";
import { actionsFor, isTransient, statusKind } from "./status";
import { listWindow } from "./vlist";
import { SseParser, applyEvent, mergeTouched, upsert } from "./events";
import { match } from "./router.svelte";
import { decodeClaims } from "./session.svelte";
import { keyboardIsFree } from "./focus";
import type { Capsule } from "./api";

suite("API error mapping", () => {
  it("uses the envelope's message", () => {
    const e = errorFromResponse(400, JSON.stringify({ error: { code: "bad_request", message: "vcpus must be at most 8" } }));
    expect(e.status).toBe(400);
    expect(e.code).toBe("bad_request");
    expect(e.message).toBe("Vcpus must be at most 8");
  });
  it("explains known codes and keeps the server's detail", () => {
    const e = errorFromResponse(429, JSON.stringify({ error: { code: "quota_exceeded", message: "100 live capsules" } }));
    expect(e.message).toBe("Your team reached its limit of live capsules (100 live capsules)");
  });
  it("falls back on the status when the body is not the envelope", () => {
    expect(errorFromResponse(502, "<html>bad gateway</html>").message).toBe("The server could not reach a host (HTTP 502)");
    expect(errorFromResponse(404, "").message).toBe("Not found");
    expect(errorFromResponse(418, "").message).toBe("Request failed (HTTP 418)");
    expect(errorFromResponse(599, "").message).toBe("The server failed while handling this (HTTP 599)");
  });
  it("says a 401 means signing in again", () => {
    expect(errorFromResponse(401, JSON.stringify({ error: { code: "unauthorized", message: "invalid token" } })).message).toBe(
      "Your session has expired: sign in again",
    );
  });
  it("keeps the server's reason for a 401 without a session (signing in)", () => {
    const body = JSON.stringify({ error: { code: "unauthorized", message: "unknown email or wrong password" } });
    expect(errorFromResponse(401, body, false).message).toBe("Unknown email or wrong password");
    expect(errorFromResponse(401, "", false).message).toBe("Wrong email or password");
  });
  it("names unreachable servers", () => {
    const e = networkError(new TypeError("Failed to fetch"));
    expect(e.status).toBe(0);
    expect(describe(e)).toBe("Cannot reach the Wrenn control plane (Failed to fetch)");
  });
});

suite("status classification", () => {
  it("sets transient statuses apart", () => {
    for (const s of ["starting", "pausing", "resuming", "stopping", "snapshotting", "pending"]) {
      expect(statusKind(s)).toBe("transient");
      expect(isTransient(s)).toBe(true);
    }
    expect(statusKind("running")).toBe("running");
    expect(statusKind("paused")).toBe("idle");
    expect(statusKind("hibernated")).toBe("idle");
    expect(statusKind("stopped")).toBe("terminal");
    expect(statusKind("error")).toBe("failed");
    expect(statusKind("missing")).toBe("failed");
    expect(statusKind("something-new")).toBe("failed");
    expect(isTransient("running")).toBe(false);
  });
  it("offers only the actions a status allows", () => {
    expect(actionsFor("running")).toMatchObject({ pause: true, resume: false, destroy: true, snapshot: true, connect: true });
    expect(actionsFor("paused")).toMatchObject({ pause: false, resume: true, connect: false });
    expect(actionsFor("stopping").destroy).toBe(false);
  });
});

suite("virtual list window", () => {
  it("renders only the visible rows plus overscan", () => {
    expect(listWindow(0, 400, 40, 1000, 5)).toEqual({ start: 0, end: 16, offset: 0, total: 40000 });
    const w = listWindow(4000, 400, 40, 1000, 5);
    expect(w.start).toBe(95);
    expect(w.end).toBe(116);
    expect(w.offset).toBe(3800);
  });
  it("clamps past the end and handles empty lists", () => {
    const w = listWindow(1e9, 400, 40, 1000, 5);
    expect(w.end).toBe(1000);
    expect(w.start).toBe(985);
    expect(listWindow(100, 400, 40, 0)).toEqual({ start: 0, end: 0, offset: 0, total: 0 });
    expect(listWindow(-50, 400, 40, 3, 0)).toMatchObject({ start: 0, end: 3 });
  });
});

const cap = (id: string, status: string, t: string): Capsule => ({
  id, status, template: "minimal", vcpus: 1, memory_mb: 512, timeout_sec: 0, disk_size_mb: 20480,
  created_at: "2026-01-01T00:00:00Z", last_updated: t,
});

suite("event stream", () => {
  it("parses SSE across chunk boundaries, comments and CRLF", () => {
    const p = new SseParser();
    expect(p.push(":keepalive\n\nevent: connected\ndata: {\"a\"")).toEqual([]);
    expect(p.push(":1}\n\nid: 5-0\r\nevent: capsule.pause\r\ndata: x\r\ndata: y\r")).toEqual([{ id: undefined, event: "connected", data: "{\"a\":1}" }]);
    expect(p.push("\n\r\n")).toEqual([{ id: "5-0", event: "capsule.pause", data: "x\ny" }]);
    expect(p.lastId).toBe("5-0");
  });
  it("applies capsule snapshots, newest wins, stopped leaves", () => {
    let m = new Map([["cl-a", cap("cl-a", "running", "2026-01-01T00:00:01Z")]]);
    m = applyEvent(m, { event: "capsule.pause", resource: { id: "cl-a", type: "capsule" }, sandbox: cap("cl-a", "paused", "2026-01-01T00:00:03Z") });
    expect(m.get("cl-a")?.status).toBe("paused");
    const same = applyEvent(m, { event: "capsule.state.changed", resource: { id: "cl-a", type: "capsule" }, sandbox: cap("cl-a", "running", "2026-01-01T00:00:02Z") });
    expect(same).toBe(m);
    m = applyEvent(m, { event: "capsule.create", resource: { id: "cl-b", type: "capsule" }, sandbox: cap("cl-b", "running", "2026-01-01T00:00:04Z") });
    expect(m.size).toBe(2);
    m = applyEvent(m, { event: "capsule.destroy", resource: { id: "cl-b", type: "capsule" }, sandbox: cap("cl-b", "stopped", "2026-01-01T00:00:05Z") });
    expect(m.has("cl-b")).toBe(false);
  });
  it("applies events without a snapshot by their kind", () => {
    let m = new Map([["cl-a", cap("cl-a", "pausing", "2026-01-01T00:00:01Z")]]);
    m = applyEvent(m, { event: "capsule.pause", resource: { id: "cl-a", type: "capsule" }, timestamp: "2026-01-01T00:00:02Z" });
    expect(m.get("cl-a")?.status).toBe("paused");
    m = applyEvent(m, { event: "capsule.state.changed", metadata: { to: "error" }, resource: { id: "cl-a", type: "capsule" } });
    expect(m.get("cl-a")?.status).toBe("error");
    const unknown = applyEvent(m, { event: "capsule.pause", resource: { id: "cl-x", type: "capsule" } });
    expect(unknown).toBe(m);
    expect(applyEvent(m, { event: "template.snapshot.create", resource: { id: "t", type: "template" } })).toBe(m);
    m = applyEvent(m, { event: "capsule.destroy", resource: { id: "cl-a", type: "capsule" } });
    expect(m.size).toBe(0);
  });
  it("a list read while rows changed keeps the changes", () => {
    const stale = new Map([["cl-a", cap("cl-a", "running", "2026-01-01T00:00:01Z")], ["cl-gone", cap("cl-gone", "running", "2026-01-01T00:00:01Z")]]);
    const current = new Map([["cl-a", cap("cl-a", "pausing", "2026-01-01T00:00:02Z")], ["cl-new", cap("cl-new", "running", "2026-01-01T00:00:03Z")]]);
    const merged = mergeTouched(stale, current, new Set(["cl-a", "cl-new", "cl-gone"]));
    expect(merged.get("cl-a")?.status).toBe("pausing");
    expect(merged.has("cl-new")).toBe(true);
    expect(merged.has("cl-gone")).toBe(false);
    // Rows nobody touched are the list's.
    expect(mergeTouched(stale, new Map(), new Set()).size).toBe(2);
  });
  it("upsert keeps a newer row over a stale answer", () => {
    const m = new Map([["cl-a", cap("cl-a", "paused", "2026-01-01T00:00:05Z")]]);
    expect(upsert(m, cap("cl-a", "pausing", "2026-01-01T00:00:04Z")).get("cl-a")?.status).toBe("paused");
  });
});

suite("routes and tokens", () => {
  it("matches app paths", () => {
    expect(match("/")).toEqual({ name: "home", params: {} });
    expect(match("/capsules/cl-abc/")).toEqual({ name: "capsule", params: { id: "cl-abc" } });
    expect(match("/admin/builds/bld-1")).toEqual({ name: "admin-build", params: { id: "bld-1" } });
    expect(match("/nope").name).toBe("not-found");
    expect(match("/capsules/%E0%A4%A").name).toBe("not-found");
  });
  it("reads JWT claims and rejects garbage", () => {
    const payload = btoa(JSON.stringify({ sub: "usr-1", team_id: "team-1", role: "owner", email: "a@b.c", name: "Ä", is_admin: true, exp: 2e9 }))
      .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
    const c = decodeClaims(`x.${payload}.y`);
    expect(c).toMatchObject({ sub: "usr-1", team_id: "team-1", role: "owner", is_admin: true });
    expect(decodeClaims("nonsense")).toBeNull();
    expect(decodeClaims("a.b.c")).toBeNull();
  });
});

suite("keyboard focus", () => {
  const own = { kids: new Set<unknown>(["own", "xterm-textarea"]), contains(n: unknown) { return this.kids.has(n); } };
  it("is free when nothing, or only the page, has it", () => {
    expect(keyboardIsFree(null, "body", own)).toBe(true);
    expect(keyboardIsFree("body", "body", own)).toBe(true);
  });
  it("is free when it is already inside the widget", () => {
    expect(keyboardIsFree("xterm-textarea", "body", own)).toBe(true);
  });
  it("is not free while a field elsewhere has it", () => {
    expect(keyboardIsFree("snapshot-name-input", "body", own)).toBe(false);
  });
});

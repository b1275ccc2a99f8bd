// The REST client: every call of the dashboard goes through `request`, which adds the
// session's bearer token, turns failures into readable `ApiError`s and ends the
// session on a 401.

import { ApiError, errorFromResponse, networkError } from "./errors";
import { session } from "./session.svelte";

export { ApiError };

type Method = "GET" | "POST" | "PUT" | "PATCH" | "DELETE";

interface Options {
  /** JSON body (sent as `application/json`) or a ready body such as FormData. */
  body?: unknown;
  /** Answer as a Blob instead of JSON. */
  blob?: boolean;
  /** Send without the session token (sign-in, sign-up). */
  anonymous?: boolean;
  signal?: AbortSignal;
}

/** One API call; resolves with the parsed JSON (undefined for 204). */
export async function request<T>(method: Method, path: string, opts: Options = {}): Promise<T> {
  const headers: Record<string, string> = { Accept: "application/json" };
  const token = opts.anonymous ? null : session.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  let body: BodyInit | undefined;
  if (opts.body instanceof FormData || opts.body instanceof Blob) body = opts.body;
  else if (opts.body !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  let res: Response;
  try {
    res = await fetch(path, { method, headers, body, signal: opts.signal });
  } catch (e) {
    if (e instanceof DOMException && e.name === "AbortError") throw e;
    throw networkError(e);
  }
  if (!res.ok) {
    const err = errorFromResponse(res.status, await res.text().catch(() => ""), token !== null);
    if (res.status === 401 && token) session.expire();
    throw err;
  }
  if (opts.blob) return (await res.blob()) as T;
  if (res.status === 204) return undefined as T;
  const text = await res.text();
  return (text ? JSON.parse(text) : undefined) as T;
}

// --- Wire types (the code in crates/wrenn-cpserver/src/api is their source) ---

export interface AuthResponse { token: string; user_id: string; team_id: string; email: string; name: string }
export interface Capsule {
  id: string; status: string; template: string; vcpus: number; memory_mb: number;
  timeout_sec: number; disk_size_mb: number; guest_ip?: string; host_ip?: string;
  created_at: string; started_at?: string; last_active_at?: string; last_updated: string;
  metadata?: Record<string, string>;
}
export interface CreateCapsule { template?: string; vcpus?: number; memory_mb?: number; timeout_sec?: number; disk_size_mb?: number; metadata?: Record<string, string> }
export interface FileEntry { name: string; path: string; type: "file" | "directory" | "symlink"; size: number; mode: number; permissions: string; owner: string; group: string; modified_at: number; symlink_target?: string }
export interface ProcessEntry { pid: number; tag?: string; cmd: string; args?: string[]; envs?: Record<string, string>; cwd?: string }
export interface MetricPoint { timestamp_unix: number; cpu_pct: number; mem_bytes: number; disk_bytes: number }
export interface CapsuleMetrics { sandbox_id: string; range: string; points: MetricPoint[] }
export interface Template { name: string; type: string; vcpus?: number; memory_mb?: number; size_bytes: number; created_at: string; platform: boolean; protected: boolean; metadata?: Record<string, string> }
export interface ApiKey { id: string; team_id: string; name: string; key_prefix: string; created_by?: string | null; creator_email?: string | null; created_at: string; last_used?: string | null; key?: string | null }
export interface Team { id: string; name: string; slug: string; is_byoc: boolean; created_at: string }
/** A team with the caller's role in it (the team's fields flattened). */
export type TeamWithRole = Team & { role: string };
export interface Member { user_id: string; name: string; email: string; role: string; joined_at: string }
export interface AuditItem { id: string; actor_type: string; actor_id?: string | null; actor_name?: string | null; resource_type: string; resource_id?: string | null; action: string; scope: string; status: string; metadata?: unknown; created_at: string }
export interface AuditPage { items: AuditItem[]; next_before?: string | null; next_before_id?: string | null }
export interface Usage { from: string; to: string; points: { date: string; cpu_minutes: number; ram_mb_minutes: number }[] }
export interface Stats { range: string; current: { running_count: number; vcpus_reserved: number; memory_mb_reserved: number }; peaks: { running_count: number; vcpus: number; memory_mb: number }; series: { labels: string[]; running: number[]; vcpus: number[]; memory_mb: number[] } }
export interface Host { id: string; type: string; team_id?: string | null; team_name?: string | null; provider?: string | null; availability_zone?: string | null; arch?: string | null; cpu_cores?: number | null; memory_mb?: number | null; disk_gb?: number | null; address?: string | null; status: string; last_heartbeat_at?: string | null; created_at: string }
export interface HostWithToken { host: Host; registration_token: string }
export interface AdminUser { id: string; email: string; name: string; is_admin: boolean; status: string; created_at: string; teams_joined: number; teams_owned: number }
export interface AdminTeam { id: string; name: string; slug: string; is_byoc: boolean; created_at: string; deleted_at?: string | null; member_count: number; owner_name: string; owner_email: string; active_sandbox_count: number; channel_count: number }
export interface Page { total: number; page: number; per_page: number; total_pages: number }
export interface AdminTemplate { name: string; type: string; vcpus: number; memory_mb: number; size_bytes: number; team_id: string; created_at: string }
export interface Build { id: string; name: string; team_id: string; base_template: string; recipe: string[]; healthcheck: string; vcpus: number; memory_mb: number; status: string; current_step: number; total_steps: number; logs: string[]; error: string; sandbox_id?: string | null; created_at: string; started_at?: string | null; completed_at?: string | null }
export interface CreateBuild { name: string; base_template?: string; recipe: string[]; healthcheck?: string; vcpus?: number; memory_mb?: number }

const enc = encodeURIComponent;

// --- Endpoints ---

export const auth = {
  login: (email: string, password: string) => request<AuthResponse>("POST", "/v1/auth/login", { body: { email, password }, anonymous: true }),
  signup: (email: string, password: string, name: string) => request<{ message: string }>("POST", "/v1/auth/signup", { body: { email, password, name }, anonymous: true }),
  activate: (token: string) => request<AuthResponse>("POST", "/v1/auth/activate", { body: { token }, anonymous: true }),
  switchTeam: (team_id: string) => request<AuthResponse>("POST", "/v1/auth/switch-team", { body: { team_id } }),
};

export const capsules = {
  list: () => request<Capsule[]>("GET", "/v1/capsules"),
  get: (id: string) => request<Capsule>("GET", `/v1/capsules/${enc(id)}`),
  create: (body: CreateCapsule) => request<Capsule>("POST", "/v1/capsules", { body }),
  pause: (id: string) => request<Capsule>("POST", `/v1/capsules/${enc(id)}/pause`),
  resume: (id: string) => request<Capsule>("POST", `/v1/capsules/${enc(id)}/resume`),
  destroy: (id: string) => request<Capsule>("DELETE", `/v1/capsules/${enc(id)}`),
  metrics: (id: string, range: string) => request<CapsuleMetrics>("GET", `/v1/capsules/${enc(id)}/metrics?range=${enc(range)}`),
  stats: (range: string) => request<Stats>("GET", `/v1/capsules/stats?range=${enc(range)}`),
  usage: (from: string, to: string) => request<Usage>("GET", `/v1/capsules/usage?from=${enc(from)}&to=${enc(to)}`),
  processes: (id: string) => request<{ processes: ProcessEntry[] }>("GET", `/v1/capsules/${enc(id)}/processes`),
  kill: (id: string, selector: string, signal = "SIGKILL") => request<void>("DELETE", `/v1/capsules/${enc(id)}/processes/${enc(selector)}?signal=${enc(signal)}`),
};

export const files = {
  list: (id: string, path: string) => request<{ entries: FileEntry[] }>("POST", `/v1/capsules/${enc(id)}/files/list`, { body: { path, depth: 1 } }),
  read: (id: string, path: string) => request<Blob>("POST", `/v1/capsules/${enc(id)}/files/stream/read`, { body: { path }, blob: true }),
  mkdir: (id: string, path: string) => request<{ entry: FileEntry }>("POST", `/v1/capsules/${enc(id)}/files/mkdir`, { body: { path } }),
  remove: (id: string, path: string) => request<void>("POST", `/v1/capsules/${enc(id)}/files/remove`, { body: { path } }),
  write: (id: string, path: string, file: Blob) => {
    const form = new FormData();
    form.append("path", path);
    form.append("file", file);
    return request<void>("POST", `/v1/capsules/${enc(id)}/files/write`, { body: form });
  },
};

export const snapshots = {
  list: () => request<Template[]>("GET", "/v1/snapshots"),
  create: (sandbox_id: string, name: string | undefined, overwrite = false) =>
    request<Template>("POST", `/v1/snapshots${overwrite ? "?overwrite=true" : ""}`, { body: name ? { sandbox_id, name } : { sandbox_id } }),
  remove: (name: string) => request<void>("DELETE", `/v1/snapshots/${enc(name)}`),
};

export const apiKeys = {
  list: () => request<ApiKey[]>("GET", "/v1/api-keys"),
  create: (name: string) => request<ApiKey>("POST", "/v1/api-keys", { body: { name } }),
  remove: (id: string) => request<void>("DELETE", `/v1/api-keys/${enc(id)}`),
};

export const teams = {
  list: () => request<TeamWithRole[]>("GET", "/v1/teams"),
  create: (name: string) => request<TeamWithRole>("POST", "/v1/teams", { body: { name } }),
  rename: (id: string, name: string) => request<unknown>("PATCH", `/v1/teams/${enc(id)}`, { body: { name } }),
  remove: (id: string) => request<void>("DELETE", `/v1/teams/${enc(id)}`),
  members: (id: string) => request<Member[]>("GET", `/v1/teams/${enc(id)}/members`),
  addMember: (id: string, email: string) => request<Member>("POST", `/v1/teams/${enc(id)}/members`, { body: { email } }),
  setRole: (id: string, uid: string, role: string) => request<unknown>("PATCH", `/v1/teams/${enc(id)}/members/${enc(uid)}`, { body: { role } }),
  removeMember: (id: string, uid: string) => request<void>("DELETE", `/v1/teams/${enc(id)}/members/${enc(uid)}`),
  leave: (id: string) => request<void>("POST", `/v1/teams/${enc(id)}/leave`),
};

function auditQuery(before?: { at: string; id: string }, limit = 50): string {
  const q = new URLSearchParams({ limit: String(limit) });
  if (before) {
    q.set("before", before.at);
    q.set("before_id", before.id);
  }
  return q.toString();
}

export const audit = {
  list: (before?: { at: string; id: string }) => request<AuditPage>("GET", `/v1/audit-logs?${auditQuery(before)}`),
  admin: (before?: { at: string; id: string }) => request<AuditPage>("GET", `/v1/admin/audit-logs?${auditQuery(before)}`),
};

export const hosts = {
  list: () => request<Host[]>("GET", "/v1/hosts"),
  create: (body: { type: string; team_id?: string; provider?: string; availability_zone?: string }) => request<HostWithToken>("POST", "/v1/hosts", { body }),
  token: (id: string) => request<HostWithToken>("POST", `/v1/hosts/${enc(id)}/token`),
  remove: (id: string, force = false) => request<void>("DELETE", `/v1/hosts/${enc(id)}${force ? "?force=true" : ""}`),
};

export const admin = {
  users: (page: number) => request<Page & { users: AdminUser[] }>("GET", `/v1/admin/users?page=${page}`),
  setActive: (id: string, active: boolean) => request<unknown>("PUT", `/v1/admin/users/${enc(id)}/active`, { body: { active } }),
  teams: (page: number) => request<Page & { teams: AdminTeam[] }>("GET", `/v1/admin/teams?page=${page}`),
  setByoc: (id: string, enabled: boolean) => request<unknown>("PUT", `/v1/admin/teams/${enc(id)}/byoc`, { body: { enabled } }),
  deleteTeam: (id: string) => request<void>("DELETE", `/v1/admin/teams/${enc(id)}`),
  templates: () => request<AdminTemplate[]>("GET", "/v1/admin/templates"),
  deleteTemplate: (name: string) => request<void>("DELETE", `/v1/admin/templates/${enc(name)}`),
};

/** Template builds: `/v1/admin/builds` (platform) or `/v1/builds` (the team's). */
export function builds(scope: "admin" | "team") {
  const base = scope === "admin" ? "/v1/admin/builds" : "/v1/builds";
  return {
    list: () => request<Build[]>("GET", base),
    get: (id: string) => request<Build>("GET", `${base}/${enc(id)}`),
    create: (body: CreateBuild) => request<Build>("POST", base, { body }),
    cancel: (id: string) => request<unknown>("POST", `${base}/${enc(id)}/cancel`),
  };
}

/** The WebSocket URL of an API path on this origin. */
export function wsUrl(path: string): string {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${location.host}${path}`;
}

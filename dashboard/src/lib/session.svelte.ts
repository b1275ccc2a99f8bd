// The signed-in session: the user JWT and what it says.
//
// The token lives in memory and in sessionStorage: a reload keeps the user signed in,
// but the token (a 6 h bearer credential) never outlives the browser tab and is not
// shared with other tabs, which limits what a leaked or forgotten session exposes.

/** What the dashboard reads from a user JWT (display only: the server re-checks). */
export interface Claims {
  sub: string;
  team_id: string;
  role: string;
  email: string;
  name: string;
  is_admin: boolean;
  exp: number;
}

const KEY = "wrenn.session";

/** The claims of `token`, or null when it is not a readable JWT. */
export function decodeClaims(token: string): Claims | null {
  const part = token.split(".")[1];
  if (!part) return null;
  try {
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const json = new TextDecoder().decode(Uint8Array.from(atob(b64), (c) => c.charCodeAt(0)));
    const c = JSON.parse(json) as Partial<Claims>;
    if (typeof c.sub !== "string" || typeof c.team_id !== "string" || typeof c.exp !== "number") return null;
    return {
      sub: c.sub,
      team_id: c.team_id,
      role: typeof c.role === "string" ? c.role : "member",
      email: typeof c.email === "string" ? c.email : "",
      name: typeof c.name === "string" ? c.name : "",
      is_admin: c.is_admin === true,
      exp: c.exp,
    };
  } catch {
    return null;
  }
}

function storage(): Storage | null {
  try {
    return typeof sessionStorage === "undefined" ? null : sessionStorage;
  } catch {
    return null;
  }
}

class Session {
  token = $state<string | null>(null);
  claims = $state<Claims | null>(null);
  /** Why the last session ended, shown on the sign-in page. */
  notice = $state<string>("");
  #timer: ReturnType<typeof setTimeout> | undefined;

  constructor() {
    const saved = storage()?.getItem(KEY);
    if (saved) this.set(saved);
  }

  /** Signs in with `token`; false when it is unreadable or already expired. */
  set(token: string): boolean {
    const claims = decodeClaims(token);
    if (!claims || claims.exp * 1000 <= Date.now()) {
      this.clear();
      return false;
    }
    this.token = token;
    this.claims = claims;
    this.notice = "";
    storage()?.setItem(KEY, token);
    clearTimeout(this.#timer);
    // Long timeouts overflow setTimeout's 32-bit delay; tokens last hours, not weeks.
    const delay = Math.min(claims.exp * 1000 - Date.now(), 2 ** 31 - 1);
    this.#timer = setTimeout(() => this.expire(), delay);
    return true;
  }

  /** Ends the session because the server (or the clock) says it is over. */
  expire(message = "Your session has expired: sign in again.") {
    if (!this.token) return;
    this.clear();
    this.notice = message;
  }

  /** Signs out. */
  clear() {
    clearTimeout(this.#timer);
    this.token = null;
    this.claims = null;
    storage()?.removeItem(KEY);
  }

  get isAdmin(): boolean {
    return this.claims?.is_admin ?? false;
  }

  /** Whether the user may manage the current team (owner or admin). */
  get canManageTeam(): boolean {
    return this.claims?.role === "owner" || this.claims?.role === "admin";
  }
}

/** The one session of this page. */
export const session = new Session();

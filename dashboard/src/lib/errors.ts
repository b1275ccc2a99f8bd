// Turning API failures into sentences a person can act on.

/** A failed API call: HTTP status, the envelope's `code`, and a readable message. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

/** Status 0: the request never got an answer. */
export const NETWORK = 0;

const BY_STATUS: Record<number, string> = {
  400: "The request was not accepted",
  401: "Your session has expired: sign in again",
  403: "You are not allowed to do that",
  404: "Not found",
  405: "That action is not available here",
  409: "That conflicts with the current state: reload and try again",
  413: "That is too large",
  429: "Too many requests or a quota was reached: try again later",
  500: "The server failed while handling this",
  502: "The server could not reach a host",
  503: "The service is unavailable right now: try again shortly",
  504: "The server timed out waiting for a host",
};

/** Messages for envelope codes whose server text is terse or technical. */
const BY_CODE: Record<string, string> = {
  quota_exceeded: "Your team reached its limit of live capsules",
  insufficient_capacity: "Every host is full right now: try again later",
  email_taken: "An account with this email already exists",
  account_not_activated: "This account is not activated yet: use the link in the activation email",
  account_disabled: "This account is disabled: ask an administrator",
};

function capitalise(s: string): string {
  return s.length ? s[0].toUpperCase() + s.slice(1) : s;
}

/** The error of an HTTP answer with `status` and the raw `body` text; `withSession`
 * says whether the request carried the session's token (a 401 then means it expired;
 * without one, as when signing in, the server's reason is what matters). */
export function errorFromResponse(status: number, body: string, withSession = true): ApiError {
  let code = "";
  let message = "";
  try {
    const parsed = JSON.parse(body) as { error?: { code?: unknown; message?: unknown } };
    if (parsed && typeof parsed === "object" && parsed.error) {
      if (typeof parsed.error.code === "string") code = parsed.error.code;
      if (typeof parsed.error.message === "string") message = parsed.error.message.trim();
    }
  } catch {
    // Not JSON (a proxy's page, an empty body): fall back on the status.
  }
  const generic = BY_STATUS[status] ?? (status >= 500 ? BY_STATUS[500] : `Request failed (HTTP ${status})`);
  let text: string;
  if (status === 401 && !withSession) text = message ? capitalise(message) : "Wrong email or password";
  else if (status === 401) text = message && code !== "unauthorized" ? capitalise(message) : BY_STATUS[401];
  else if (BY_CODE[code]) text = message ? `${BY_CODE[code]} (${message})` : BY_CODE[code];
  else if (message) text = capitalise(message);
  else text = generic;
  if (status >= 500 && !text.includes(String(status))) text = `${text} (HTTP ${status})`;
  return new ApiError(status, code || `http_${status}`, text);
}

/** The error of a request that got no answer (server down, network gone). */
export function networkError(cause: unknown): ApiError {
  const detail = cause instanceof Error && cause.message ? ` (${cause.message})` : "";
  return new ApiError(NETWORK, "network", `Cannot reach the Wrenn control plane${detail}`);
}

/** A readable message for anything thrown. */
export function describe(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.message || String(err);
  return String(err);
}

// The team's live events (`GET /v1/events/stream`, Server-Sent Events) and how they
// change the capsule list.
//
// EventSource cannot send an Authorization header, so the stream is read with fetch:
// `SseParser` splits it into messages, `applyEvent` folds each into the list.

import type { Capsule } from "./api";

/** One SSE message. */
export interface SseMessage {
  id?: string;
  event: string;
  data: string;
}

/** Incremental parser of an SSE byte stream (decoded text), per the HTML spec. */
export class SseParser {
  #buffer = "";
  #data: string[] = [];
  #event = "";
  #id: string | undefined;
  /** The last `id:` seen, for `Last-Event-ID` on reconnect. */
  lastId: string | undefined;

  /** Feeds `chunk`; returns the messages it completed. */
  push(chunk: string): SseMessage[] {
    this.#buffer += chunk;
    const out: SseMessage[] = [];
    for (;;) {
      const m = /\r\n|\r|\n/.exec(this.#buffer);
      // A lone trailing \r may be the first half of \r\n: wait for more.
      if (!m || (m[0] === "\r" && m.index === this.#buffer.length - 1)) break;
      const line = this.#buffer.slice(0, m.index);
      this.#buffer = this.#buffer.slice(m.index + m[0].length);
      if (line === "") {
        if (this.#data.length) {
          out.push({ id: this.#id, event: this.#event || "message", data: this.#data.join("\n") });
        }
        this.#data = [];
        this.#event = "";
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.#data.push(value);
      else if (field === "event") this.#event = value;
      else if (field === "id" && !value.includes("\0")) {
        this.#id = value;
        this.lastId = value;
      }
    }
    return out;
  }
}

/** The payload of a stream event (SDK `SSEEvent`). */
export interface StreamEvent {
  event: string;
  outcome?: string;
  resource?: { id: string; type: string };
  metadata?: { to?: string };
  sandbox?: Capsule;
  timestamp?: string;
}

/** Statuses the list endpoint hides; a capsule reaching one leaves the list. */
const GONE = new Set(["stopped"]);

/** Whether `next` is at least as recent as `prev` (by `last_updated`). */
function newer(next: Capsule, prev: Capsule | undefined): boolean {
  if (!prev) return true;
  const a = Date.parse(next.last_updated);
  const b = Date.parse(prev.last_updated);
  return !Number.isFinite(a) || !Number.isFinite(b) || a >= b;
}

/** Folds a capsule the API answered with into the list (newer wins; stopped leaves). */
export function upsert(list: Map<string, Capsule>, c: Capsule): Map<string, Capsule> {
  const prev = list.get(c.id);
  if (!newer(c, prev)) return list;
  const next = new Map(list);
  if (GONE.has(c.status)) next.delete(c.id);
  else next.set(c.id, c);
  return next;
}

/** A freshly read `list` with what changed locally while it was being read: for each
 * id in `touched`, the row in `current` wins over the list's older one, and a row
 * that left `current` (stopped) stays out. */
export function mergeTouched(list: Map<string, Capsule>, current: Map<string, Capsule>, touched: Set<string>): Map<string, Capsule> {
  let next = list;
  for (const id of touched) {
    const mine = current.get(id);
    if (mine) next = upsert(next, mine);
    else if (next.has(id)) {
      next = new Map(next);
      next.delete(id);
    }
  }
  return next;
}

/** Folds one stream event into the list; returns the same map when nothing changed. */
export function applyEvent(list: Map<string, Capsule>, ev: StreamEvent): Map<string, Capsule> {
  if (ev.resource?.type !== "capsule") return list;
  if (ev.sandbox) return upsert(list, ev.sandbox);
  const id = ev.resource.id;
  const prev = list.get(id);
  if (ev.event === "capsule.destroy") {
    if (!prev) return list;
    const next = new Map(list);
    next.delete(id);
    return next;
  }
  if (!prev) return list;
  let status: string | undefined;
  if (ev.event === "capsule.pause") status = "paused";
  else if (ev.event === "capsule.create") status = "running";
  else if (ev.event === "capsule.state.changed") status = ev.metadata?.to;
  if (!status || status === prev.status) return list;
  const next = new Map(list);
  next.set(id, { ...prev, status, last_updated: ev.timestamp ?? prev.last_updated });
  return next;
}

/** Connection state of the live stream, for the UI. */
export type StreamState = "connecting" | "live" | "retrying";

/** Reads the event stream until `signal` aborts, reconnecting (with `Last-Event-ID`)
 * after failures. `onUnauthorized` is called, and reading stops, on a 401. */
export async function followEvents(opts: {
  token: () => string | null;
  onEvent: (ev: StreamEvent) => void;
  onState: (s: StreamState) => void;
  onUnauthorized: () => void;
  signal: AbortSignal;
}): Promise<void> {
  let lastId: string | undefined;
  let delay = 500;
  while (!opts.signal.aborted) {
    const token = opts.token();
    if (!token) return;
    opts.onState("connecting");
    try {
      const headers: Record<string, string> = { Accept: "text/event-stream", Authorization: `Bearer ${token}` };
      if (lastId) headers["Last-Event-ID"] = lastId;
      const res = await fetch("/v1/events/stream", { headers, signal: opts.signal, cache: "no-store" });
      if (res.status === 401) {
        opts.onUnauthorized();
        return;
      }
      if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
      opts.onState("live");
      delay = 500;
      const parser = new SseParser();
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        for (const msg of parser.push(value)) {
          if (parser.lastId) lastId = parser.lastId;
          try {
            opts.onEvent(JSON.parse(msg.data) as StreamEvent);
          } catch {
            // A malformed message is skipped; the next one still applies.
          }
        }
      }
    } catch (e) {
      if (opts.signal.aborted) return;
      void e;
    }
    if (opts.signal.aborted) return;
    opts.onState("retrying");
    await new Promise((r) => setTimeout(r, delay));
    delay = Math.min(delay * 2, 10_000);
  }
}

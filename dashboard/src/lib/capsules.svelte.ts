// The team's capsules, kept live: loaded once, then updated by the event stream and
// by the answers of the dashboard's own lifecycle calls.

import { capsules as api, type Capsule } from "./api";
import { describe } from "./errors";
import { applyEvent, followEvents, mergeTouched, upsert, type StreamState } from "./events";
import { session } from "./session.svelte";

class CapsuleStore {
  byId = $state.raw(new Map<string, Capsule>());
  /** Newest first. */
  list = $derived([...this.byId.values()].sort((a, b) => (a.created_at < b.created_at ? 1 : a.created_at > b.created_at ? -1 : 0)));
  loaded = $state(false);
  error = $state("");
  stream = $state<StreamState>("connecting");
  #abort: AbortController | null = null;
  #trackers = new Set<Set<string>>();
  #team: string | null = null;

  /** Starts following the current team (again, after a team switch). */
  start() {
    const team = session.claims?.team_id ?? null;
    if (this.#abort && this.#team === team) return;
    this.stop();
    this.#team = team;
    this.byId = new Map();
    this.loaded = false;
    const abort = new AbortController();
    this.#abort = abort;
    void this.reload();
    void followEvents({
      token: () => session.token,
      signal: abort.signal,
      onUnauthorized: () => session.expire(),
      onState: (s) => {
        this.stream = s;
        // Whatever happened while not connected: read the list again once live.
        if (s === "live") void this.reload();
      },
      onEvent: (ev) => {
        if (ev.resource?.type === "capsule") this.#touch(ev.resource.id);
        this.byId = applyEvent(this.byId, ev);
      },
    });
  }

  stop() {
    this.#abort?.abort();
    this.#abort = null;
    this.#team = null;
  }

  async reload() {
    // Rows that change while the list is on its way are newer than the list: track them.
    const touched = new Set<string>();
    this.#trackers.add(touched);
    try {
      const rows = await api.list();
      let next = new Map<string, Capsule>();
      for (const c of rows) next.set(c.id, c);
      next = mergeTouched(next, this.byId, touched);
      // Rows the list hides (error) that this page already shows stay until reload.
      for (const [id, c] of this.byId) if (!next.has(id) && c.status === "error") next = upsert(next, c);
      this.byId = next;
      this.error = "";
    } catch (e) {
      this.error = describe(e);
    } finally {
      this.#trackers.delete(touched);
      this.loaded = true;
    }
  }

  #touch(id: string) {
    for (const t of this.#trackers) t.add(id);
  }

  /** Shows `id` in a transient `status` while a call for it is under way (the
   * answer, or any event, replaces it). */
  mark(id: string, status: string) {
    const c = this.byId.get(id);
    if (!c) return;
    this.#touch(id);
    const next = new Map(this.byId);
    next.set(id, { ...c, status });
    this.byId = next;
  }

  /** Folds an API answer in (a lifecycle call's capsule). */
  put(c: Capsule) {
    this.#touch(c.id);
    this.byId = upsert(this.byId, c);
  }
}

/** The capsules of the session's team. */
export const capsuleStore = new CapsuleStore();

// The capsule lifecycle actions the pages share: each shows the transient status at
// once and folds the API's answer into the live list.

import { capsules as api, snapshots, type Capsule, type Template } from "./api";
import { capsuleStore } from "./capsules.svelte";

export type Action = "pause" | "resume" | "destroy";

const TRANSIENT: Record<Action, string> = { pause: "pausing", resume: "resuming", destroy: "stopping" };

/** Runs `action` on capsule `id`; the capsule as the API answered. */
export async function lifecycle(id: string, action: Action): Promise<Capsule> {
  const before = capsuleStore.byId.get(id);
  capsuleStore.mark(id, TRANSIENT[action]);
  try {
    const c = await (action === "pause" ? api.pause(id) : action === "resume" ? api.resume(id) : api.destroy(id));
    capsuleStore.put(c);
    return c;
  } catch (e) {
    if (before) capsuleStore.put({ ...before });
    // The optimistic status is undone by the real one.
    void capsuleStore.reload();
    throw e;
  }
}

/** Snapshots capsule `id` into a template (named by the server when `name` is empty). */
export async function snapshot(id: string, name?: string): Promise<Template> {
  capsuleStore.mark(id, "snapshotting");
  try {
    return await snapshots.create(id, name?.trim() || undefined);
  } finally {
    void capsuleStore.reload();
  }
}

// Capsule statuses as the dashboard shows them.

/** Wire statuses (SDK 0.3.0). */
export type CapsuleStatus =
  | "pending" | "starting" | "running" | "pausing" | "paused" | "snapshotting"
  | "resuming" | "stopping" | "hibernated" | "stopped" | "missing" | "error";

/** How a status looks: in motion, up, resting, gone, or failed. */
export type StatusKind = "transient" | "running" | "idle" | "terminal" | "failed";

const TRANSIENT = new Set(["pending", "starting", "pausing", "resuming", "stopping", "snapshotting"]);
const IDLE = new Set(["paused", "hibernated"]);

/** The kind of `status`; unknown statuses count as failed so they stand out. */
export function statusKind(status: string): StatusKind {
  if (TRANSIENT.has(status)) return "transient";
  if (status === "running") return "running";
  if (IDLE.has(status)) return "idle";
  if (status === "stopped") return "terminal";
  return "failed";
}

/** Whether the capsule is between two settled statuses. */
export function isTransient(status: string): boolean {
  return TRANSIENT.has(status);
}

/** The lifecycle actions that make sense from `status`. */
export function actionsFor(status: string): { pause: boolean; resume: boolean; destroy: boolean; snapshot: boolean; connect: boolean } {
  return {
    pause: status === "running",
    resume: status === "paused" || status === "hibernated",
    destroy: status !== "stopped" && status !== "stopping",
    snapshot: status === "running" || status === "paused",
    connect: status === "running",
  };
}

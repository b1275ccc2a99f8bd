// Small formatting helpers.

/** `1536` → `1.5 KiB`. */
export function bytes(n: number | null | undefined): string {
  if (n == null || !Number.isFinite(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

/** A timestamp in the reader's locale, or `–`. */
export function when(t: string | number | null | undefined): string {
  if (t == null || t === "") return "–";
  const d = typeof t === "number" ? new Date(t * 1000) : new Date(t);
  return Number.isNaN(d.getTime()) ? "–" : d.toLocaleString();
}

/** `3 min ago` style relative time. */
export function ago(t: string | null | undefined, now = Date.now()): string {
  if (!t) return "–";
  const ms = now - new Date(t).getTime();
  if (!Number.isFinite(ms)) return "–";
  const s = Math.round(ms / 1000);
  if (s < 60) return `${Math.max(0, s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

// Window math of the virtual list: which rows to render for a scroll position.

export interface ListWindow {
  /** First row index to render. */
  start: number;
  /** One past the last row index to render. */
  end: number;
  /** Pixels above the first rendered row. */
  offset: number;
  /** Height of the whole list in pixels. */
  total: number;
}

/** The rows of `count` rows of `rowHeight` px visible in a viewport of `height` px
 * scrolled by `scrollTop` px, plus `overscan` rows on each side. */
export function listWindow(scrollTop: number, height: number, rowHeight: number, count: number, overscan = 8): ListWindow {
  const total = Math.max(0, count) * rowHeight;
  if (count <= 0 || rowHeight <= 0) return { start: 0, end: 0, offset: 0, total: Math.max(0, total) };
  const maxTop = Math.max(0, total - Math.max(0, height));
  const top = Math.min(Math.max(0, scrollTop || 0), maxTop);
  const first = Math.floor(top / rowHeight);
  const visible = Math.ceil(Math.max(0, height) / rowHeight) + 1;
  const start = Math.max(0, first - overscan);
  const end = Math.min(count, first + visible + overscan);
  return { start, end, offset: start * rowHeight, total };
}

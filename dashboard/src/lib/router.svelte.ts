// A small history router: the app's pages are real paths (`/capsules/cl-…`), which
// the control plane answers with index.html.

/** A matched route: its name and path parameters. */
export interface Route {
  name: string;
  params: Record<string, string>;
}

const ROUTES: [string, string][] = [
  ["/login", "login"],
  ["/signup", "signup"],
  ["/activate", "activate"],
  ["/capsules", "capsules"],
  ["/capsules/:id", "capsule"],
  ["/templates", "templates"],
  ["/keys", "keys"],
  ["/team", "team"],
  ["/audit", "audit"],
  ["/usage", "usage"],
  ["/builds", "builds"],
  ["/builds/:id", "build"],
  ["/admin/hosts", "admin-hosts"],
  ["/admin/users", "admin-users"],
  ["/admin/teams", "admin-teams"],
  ["/admin/templates", "admin-templates"],
  ["/admin/builds", "admin-builds"],
  ["/admin/builds/:id", "admin-build"],
  ["/admin/audit", "admin-audit"],
];

/** The route of `path`: `home` for `/`, `not-found` for anything unknown. */
export function match(path: string): Route {
  const clean = path.replace(/\/+$/, "") || "/";
  if (clean === "/") return { name: "home", params: {} };
  const parts = clean.split("/").slice(1);
  for (const [pattern, name] of ROUTES) {
    const want = pattern.split("/").slice(1);
    if (want.length !== parts.length) continue;
    const params: Record<string, string> = {};
    let ok = true;
    for (let i = 0; i < want.length; i++) {
      if (want[i].startsWith(":")) {
        try {
          params[want[i].slice(1)] = decodeURIComponent(parts[i]);
        } catch {
          ok = false;
        }
      } else if (want[i] !== parts[i]) ok = false;
      if (!ok) break;
    }
    if (ok) return { name, params };
  }
  return { name: "not-found", params: {} };
}

class Router {
  path = $state(typeof location === "undefined" ? "/" : location.pathname);
  search = $state(typeof location === "undefined" ? "" : location.search);
  route = $derived(match(this.path));

  constructor() {
    if (typeof window !== "undefined") {
      window.addEventListener("popstate", () => this.#sync());
    }
  }

  #sync() {
    this.path = location.pathname;
    this.search = location.search;
  }

  /** Goes to `to` (a path with an optional query), adding a history entry unless `replace`. */
  go(to: string, replace = false) {
    if (to === location.pathname + location.search) return;
    if (replace) history.replaceState(null, "", to);
    else history.pushState(null, "", to);
    this.#sync();
    window.scrollTo(0, 0);
  }

  /** A query parameter of the current URL. */
  query(name: string): string | null {
    return new URLSearchParams(this.search).get(name);
  }
}

/** The page's router. */
export const router = new Router();

/** Click handler for in-app links: keeps the page, lets modified clicks open tabs. */
export function link(node: HTMLAnchorElement) {
  const onClick = (e: MouseEvent) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const href = node.getAttribute("href");
    if (!href || !href.startsWith("/")) return;
    e.preventDefault();
    router.go(href);
  };
  node.addEventListener("click", onClick);
  return { destroy: () => node.removeEventListener("click", onClick) };
}

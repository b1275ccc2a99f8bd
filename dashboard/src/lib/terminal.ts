// The terminal of a capsule: xterm.js over the PTY WebSocket
// (`/v1/capsules/{id}/pty`, protocol in crates/wrenn-cpserver/src/api/pty.rs).
// Loaded on demand: xterm is most of the bundle and only this tab needs it.

import { Terminal } from "@xterm/xterm";
import { FitAddon } from "@xterm/addon-fit";
import "@xterm/xterm/css/xterm.css";
import { wsUrl } from "./api";
import { keyboardIsFree } from "./focus";

/** A running terminal; `close` detaches it (the shell is killed). */
export interface TerminalSession {
  close(): void;
  focus(): void;
}

export interface TerminalEvents {
  onStatus(status: "connecting" | "connected" | "exited" | "closed", detail?: string): void;
  onError(message: string): void;
}

/** Opens a shell of capsule `id` in `el`, authenticating with `token`. */
export function openTerminal(el: HTMLElement, id: string, token: string, events: TerminalEvents): TerminalSession {
  const dark = matchMedia("(prefers-color-scheme: dark)").matches;
  const term = new Terminal({
    cursorBlink: true,
    fontSize: 13,
    fontFamily: 'ui-monospace, "SFMono-Regular", Menlo, Consolas, "Liberation Mono", monospace',
    scrollback: 5000,
    theme: dark ? { background: "#0d1117" } : { background: "#111827", foreground: "#e5e7eb" },
  });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(el);
  try {
    fit.fit();
  } catch {
    // Not laid out yet: the resize observer fits it.
  }
  const encoder = new TextEncoder();
  const ws = new WebSocket(wsUrl(`/v1/capsules/${encodeURIComponent(id)}/pty`));
  ws.binaryType = "arraybuffer";
  let started = false;
  let closedByUs = false;
  events.onStatus("connecting");

  const send = (msg: object) => {
    if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(msg));
  };

  ws.onopen = () => {
    // Browsers cannot set headers on a WebSocket: the token is the first message.
    send({ type: "auth", token });
    send({ type: "start", cols: term.cols, rows: term.rows });
  };
  ws.onmessage = (ev) => {
    if (ev.data instanceof ArrayBuffer) {
      term.write(new Uint8Array(ev.data));
      return;
    }
    let msg: { type?: string; data?: string; exit_code?: number; fatal?: boolean };
    try {
      msg = JSON.parse(String(ev.data));
    } catch {
      return;
    }
    switch (msg.type) {
      case "started":
        started = true;
        events.onStatus("connected");
        // Ready to type into, unless the user is typing elsewhere (a snapshot name).
        if (keyboardIsFree(document.activeElement, document.body, el)) term.focus();
        break;
      case "ping":
        send({ type: "pong" });
        break;
      case "exit":
        events.onStatus("exited", `exit code ${msg.exit_code ?? "?"}`);
        term.write(`\r\n\x1b[2m[process exited with code ${msg.exit_code ?? "?"}]\x1b[0m\r\n`);
        break;
      case "error":
        events.onError(msg.data ?? "terminal error");
        break;
    }
  };
  ws.onclose = (ev) => {
    if (!closedByUs) events.onStatus("closed", ev.reason || (started ? "connection closed" : "could not open the terminal"));
  };

  const input = term.onData((data) => {
    if (ws.readyState === WebSocket.OPEN && started) ws.send(encoder.encode(data));
  });
  const resize = term.onResize(({ cols, rows }) => send({ type: "resize", cols, rows }));
  const observer = new ResizeObserver(() => {
    try {
      fit.fit();
    } catch {
      // Hidden: nothing to fit.
    }
  });
  observer.observe(el);
  // A terminal outlives its socket on the server: leaving or reloading the page ends
  // the shell rather than leaving it behind.
  const onPageHide = () => send({ type: "kill" });
  window.addEventListener("pagehide", onPageHide);

  return {
    close() {
      closedByUs = true;
      observer.disconnect();
      window.removeEventListener("pagehide", onPageHide);
      input.dispose();
      resize.dispose();
      send({ type: "kill" });
      ws.close();
      term.dispose();
    },
    focus() {
      term.focus();
    },
  };
}

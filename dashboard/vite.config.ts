import { defineConfig } from "vite";
import { svelte } from "@sveltejs/vite-plugin-svelte";

// `npm run build` writes the bundle the control plane embeds (rust-embed) into the
// crate, where it is committed: building Wrenn needs no Node. File names carry content
// hashes only, so the same source always gives the same bundle (CI checks it).
export default defineConfig({
  plugins: [svelte()],
  base: "/",
  build: {
    outDir: "../crates/wrenn-cpserver/dashboard-dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: true,
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npm run dev` against a running `wrenn dev` (WRENN_URL, default :8000).
    proxy: {
      "/v1": { target: process.env.WRENN_URL ?? "http://127.0.0.1:8000", ws: true },
    },
  },
  test: {
    include: ["src/**/*.test.ts"],
    environment: "node",
  },
});

import { defineConfig } from "vitest/config";

// `npm run dev` serves the UI with hot reload and passes gRPC-Web calls to an Envoy that
// `make run` started (MITOSIS_GATEWAY, default http://127.0.0.1:8080).
const gateway = process.env.MITOSIS_GATEWAY ?? "http://127.0.0.1:8080";

export default defineConfig({
  build: {
    outDir: "dist",
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    // The module preload polyfill is an inline-free script, but modern browsers do not
    // need it; leaving it out keeps the bundle small.
    modulePreload: { polyfill: false },
    chunkSizeWarningLimit: 256,
  },
  server: {
    proxy: { "/mitosis.v1.TaskService": { target: gateway, changeOrigin: false } },
  },
  test: {
    environment: "node",
    include: ["src/**/*.test.ts"],
  },
});

import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The sidecar serves the build under /dashboard/ (see src/sidecar/dashboard.rs); the icons the
// provider catalogue names (/icons/<slug>.svg) are copied from public/ and served at /icons/.
export default defineConfig({
  base: "/dashboard/",
  plugins: [react()],
  // `npm run dev`: the page at http://localhost:5173/dashboard/ asks the service started with
  // `cargo run` (sidecar on :3001) where its gRPC port is; CORS allows this origin in development.
  server: {
    port: 5173,
    strictPort: true,
    proxy: { "/dashboard/config.json": "http://localhost:3001", "/icons": "http://localhost:3001" },
  },
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // One predictable file set for the CI check that dist matches the sources.
    sourcemap: false,
    assetsInlineLimit: 0,
  },
});

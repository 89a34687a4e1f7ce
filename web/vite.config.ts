import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The sidecar serves the build under /dashboard/ (see src/sidecar/dashboard.rs); the icons the
// provider catalogue names (/icons/<slug>.svg) are copied from public/ and served at /icons/.
export default defineConfig({
  base: "/dashboard/",
  plugins: [react()],
  build: {
    outDir: "dist",
    emptyOutDir: true,
    // One predictable file set for the CI check that dist matches the sources.
    sourcemap: false,
    assetsInlineLimit: 0,
  },
});

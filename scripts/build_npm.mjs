#!/usr/bin/env node
// Builds the npm entry points that Node (and other runtimes without TypeScript support for
// node_modules) load through package.json "exports": dist/mod.js, dist/edge.js, dist/otel.js,
// dist/drizzle.js, dist/kysely.js, ES modules with postgres.js left as an import. Bun loads the .ts sources directly (export
// condition "bun"); Deno users take the JSR package. Run by `npm pack` / `npm publish` (prepack)
// and by tests/node24_test.ts.
//
// Usage: node scripts/build_npm.mjs [outdir]   (default: dist)
import { build } from "esbuild";
import { rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outdir = resolve(root, process.argv[2] ?? "dist");

rmSync(outdir, { recursive: true, force: true });
await build({
  absWorkingDir: root,
  entryPoints: {
    mod: "mod.ts",
    edge: "edge.ts",
    otel: "otel.ts",
    drizzle: "drizzle.ts",
    kysely: "kysely.ts",
  },
  outdir,
  bundle: true,
  // Shared chunks: the five entries must share module state (Connection.init's pool, the
  // hooks symbol by which dist/otel.js instruments a pool) and classes (instanceof PoolError
  // works whichever entry threw; the Drizzle and Kysely entries check instanceof Pool).
  splitting: true,
  format: "esm",
  platform: "neutral",
  target: "esnext",
  // postgres.js stays a dependency: the consumer's resolver picks its build (Node, Bun, or the
  // cloudflare:sockets one under the "workerd" condition).
  // @opentelemetry/api too (an optional peer dependency, loaded by dist/otel.js only): one copy
  // per application holds the global providers.
  // drizzle-orm and kysely (optional peer dependencies, loaded by dist/drizzle.js and
  // dist/kysely.js only) stay imports as well: the application's copy, whose classes its code
  // checks with instanceof and is().
  external: [
    "postgres",
    "@opentelemetry/api",
    "drizzle-orm",
    "drizzle-orm/*",
    "kysely",
    "kysely/*",
  ],
  sourcemap: true,
  legalComments: "inline",
  logLevel: "warning",
});
console.log(`built mod.js, edge.js, otel.js, drizzle.js and kysely.js in ${outdir}`);

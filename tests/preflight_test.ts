// scripts/test.mjs checks, before any runtime starts, that the harness can run PostgreSQL here.
// When something stands in the way the run stops at once with one message saying what to
// change, and "0 passed, 1 failed", instead of every test file failing with the same error.
// Each case here creates a real obstacle and runs `npm test -- --smoke` (Node running
// scripts/test.mjs) against it.
//
// The TMPDIR and setpriv obstacles only exist for root (only root hands PostgreSQL to a server
// user): those cases are skipped otherwise, with the reason printed.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { setTestTimeout } from "./harness/runtime.ts";
import { node24Bin, runCommand } from "./tools.ts";

await setTestTimeout(60_000);

/** A real run of the smoke subset never ends this fast: it starts clusters under a runtime. */
const QUICK_MS = 10_000;
const HEADER = "The test harness cannot run PostgreSQL here, so no test ran:";

const NOT_ROOT = process.getuid?.() !== 0 &&
  `not running as root (uid ${process.getuid?.()}): PostgreSQL runs as this user, so there is ` +
    "no server user to be locked out of TMPDIR and no setpriv to need";
if (NOT_ROOT) console.log(`preflight_test: the TMPDIR and setpriv cases are skipped, ${NOT_ROOT}`);

/**
 * A new directory named like the harness's process roots (tmpdir()/pgdbpool-<pid>-...), so a
 * later run's reaping removes it should this process be killed; `mode` applied after mkdtemp.
 */
function scratchDir(label: string, mode: number): string {
  const dir = mkdtempSync(join(tmpdir(), `pgdbpool-${process.pid}-${label}-`));
  chmodSync(dir, mode);
  return dir;
}

/**
 * Runs `scripts/test.mjs --smoke` under `env` and checks that it stopped in the preflight:
 * quickly, without starting a runtime's suite, with the header and `message` once each, and
 * ending with "0 passed, 1 failed" and exit code 1. Returns the whole output.
 */
async function stopsInPreflight(env: Record<string, string>, message: RegExp): Promise<string> {
  const started = performance.now();
  const r = await runCommand(node24Bin(), ["scripts/test.mjs", "--smoke"], {
    timeoutMs: 120_000,
    env: { PGDBPOOL_RUNTIMES: "Bun" in globalThis ? "bun" : "deno", ...env },
  });
  const elapsed = performance.now() - started;
  const out = `${r.stdout}${r.stderr}`;
  const context = `exit ${r.code}, ${Math.round(elapsed)} ms; output:\n${out}`;
  assert.doesNotMatch(out, /^=== /m, `a suite started; ${context}`);
  assert.equal(out.split(HEADER).length - 1, 1, `the header once; ${context}`);
  assert.equal(out.split(new RegExp(message, "g")).length - 1, 1, `the message once; ${context}`);
  assert.equal(r.stdout.trimEnd().split("\n").at(-1), "0 passed, 1 failed", context);
  assert.equal(r.code, 1, context);
  assert.ok(elapsed < QUICK_MS, `took ${Math.round(elapsed)} ms; ${context}`);
  return out;
}

describe("scripts/test.mjs stops before the suites when PostgreSQL cannot run", () => {
  it("TMPDIR the server user cannot traverse", { skip: NOT_ROOT }, async () => {
    const blocked = scratchDir("preflight-tmp", 0o700);
    try {
      const out = await stopsInPreflight(
        { TMPDIR: blocked },
        /server user '\w+' cannot reach the temporary directory/,
      );
      // It says what to change, naming the directory.
      assert.ok(out.includes(`set TMPDIR to a directory every user can traverse`), out);
      assert.ok(out.includes(`chmod o+x ${blocked}`), out);
      // The directory the check made in there is gone again.
      assert.deepEqual(readdirSync(blocked), []);
    } finally {
      rmSync(blocked, { recursive: true, force: true });
    }
  });

  it("no setpriv to start PostgreSQL as the server user", { skip: NOT_ROOT }, async () => {
    // PATH is where the harness looks for setpriv; the runtimes are started by absolute path.
    const emptyPath = scratchDir("preflight-path", 0o755);
    try {
      await stopsInPreflight(
        { PATH: emptyPath },
        /through setpriv, which is not installed: install util-linux/,
      );
    } finally {
      rmSync(emptyPath, { recursive: true, force: true });
    }
  });

  it("a PostgreSQL build directory without PostgreSQL in it", async () => {
    const empty = scratchDir("preflight-bin", 0o755);
    try {
      await stopsInPreflight(
        { PGDBPOOL_PG_BINS: empty },
        new RegExp(`initdb, pg_ctl, postgres not found in ${empty}: PGDBPOOL_PG_BINS must list`),
      );
    } finally {
      rmSync(empty, { recursive: true, force: true });
    }
  });
});

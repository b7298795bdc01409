// The harness works wherever the project sits. A checkout inside a directory the PostgreSQL
// server user cannot traverse (mktemp -d is mode 700; /root/app in a container) used to fail
// every embedded-PostgreSQL test when run as root: initdb could not load its libraries from
// node_modules. This runs the suite's smoke subset the way `npm test -- --smoke` does (Node
// running scripts/test.mjs) from a copy of the project in such a directory (project_copy.ts),
// under the runtime and PostgreSQL build of this run.
//
// Only root has a server user (as anyone else the harness runs PostgreSQL as itself, and can
// traverse its own directories): the smoke run is skipped then, with the reason printed.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdtempSync, readdirSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { readableCopy } from "./harness/binaries.ts";
import { pgBinDir } from "./harness/cluster.ts";
import { run } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { copyAway } from "./project_copy.ts";
import { node24Bin, runCommand } from "./tools.ts";

await setTestTimeout(240_000);

const INNER_DEADLINE_MS = 180_000;

/** Why the smoke run has nothing to show, or false when it does (we are root). */
const NOT_ROOT = process.getuid?.() !== 0 &&
  `not running as root (uid ${process.getuid?.()}): PostgreSQL runs as this user, which can ` +
    "traverse its own directories, so there is no server user to lock out";
if (NOT_ROOT) {
  console.log(`anywhere_test: the smoke run from a mode-700 directory is skipped, ${NOT_ROOT}`);
}

describe("the harness from a directory other users cannot traverse", () => {
  it("shares one readable copy of the PostgreSQL binaries between concurrent users", async () => {
    const cacheParent = mkdtempSync(join(tmpdir(), `pgdbpool-${process.pid}-anywhere-`));
    chmodSync(cacheParent, 0o755);
    try {
      const binDir = pgBinDir();
      // Both copy, one rename wins, the other adopts the winner's copy.
      const [a, b] = await Promise.all([
        readableCopy(binDir, cacheParent),
        readableCopy(binDir, cacheParent),
      ]);
      assert.equal(a, b);
      assert.deepEqual(readdirSync(cacheParent).length, 1);
      assert.equal(statSync(dirname(a)).mode & 0o777, 0o755);
      await run(join(a, "postgres"), ["--version"], { asServer: true });
      // Reused as it is; replaced when files have gone missing (tmp cleaners).
      assert.equal(await readableCopy(binDir, cacheParent), a);
      rmSync(join(a, "postgres"));
      assert.equal(await readableCopy(binDir, cacheParent), a);
      await run(join(a, "postgres"), ["--version"], { asServer: true });
      assert.deepEqual(readdirSync(cacheParent).length, 1);
    } finally {
      rmSync(cacheParent, { recursive: true, force: true });
    }
  });

  it("passes the smoke subset", { timeout: 240_000, skip: NOT_ROOT }, async () => {
    const copy = copyAway("anywhere");
    try {
      const bun = "Bun" in globalThis;
      const started = Date.now();
      const r = await runCommand(node24Bin(), ["scripts/test.mjs", "--smoke"], {
        cwd: copy.project,
        timeoutMs: INNER_DEADLINE_MS,
        env: {
          // Fresh and traversable: the readable copy of the binaries is made from scratch.
          TMPDIR: copy.tmp,
          PGDBPOOL_RUNTIMES: bun ? "bun" : "deno",
          PGDBPOOL_PG_BINS: process.env.PGDBPOOL_PG_BIN || "embedded",
        },
      });
      const out = `${r.stdout}${r.stderr}`;
      const last = r.stdout.trimEnd().split("\n").at(-1) ?? "";
      const m = /^(\d+) passed, (\d+) failed$/.exec(last);
      const context = `exit ${r.code}, ${Date.now() - started} ms; output tail:\n` +
        out.trimEnd().split("\n").slice(-60).join("\n");
      assert.ok(m, `no summary line; ${context}`);
      assert.equal(Number(m[2]), 0, `failures; ${context}`);
      assert.ok(Number(m[1]) > 0, `nothing passed; ${context}`);
      assert.equal(r.code, 0, context);
    } finally {
      // After a timeout the inner runners and their servers may still be running in there.
      copy.remove();
    }
  });
});

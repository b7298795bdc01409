// The harness works wherever the project sits. A checkout inside a directory the PostgreSQL
// server user cannot traverse (mktemp -d is mode 700; /root/app in a container) used to fail
// every embedded-PostgreSQL test when run as root: initdb could not load its libraries from
// node_modules. This runs the suite's smoke subset (scripts/test.mjs --smoke) from a copy of
// the project in such a directory, under the runtime and PostgreSQL build of this run.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { readableCopy } from "./harness/binaries.ts";
import { pgBinDir } from "./harness/cluster.ts";
import { killAll } from "./harness/datadir.ts";
import { run } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { bunBin, denoBin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(240_000);

const INNER_DEADLINE_MS = 180_000;

/** Fails with the command's output when it does not exit 0. */
function mustRun(cmd: string, args: string[], cwd = ROOT): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${r.error?.message ?? ""}${r.stderr}`);
  }
  return r.stdout;
}

/** The project's files (tracked, plus new ones not ignored) as they are in the work tree. */
function copyProject(dest: string): void {
  // safe.directory: the checkout may belong to another user than the one running the tests.
  const git = ["-c", `safe.directory=${ROOT}`, "ls-files", "-z", "--cached", "--others"];
  const listed = mustRun("git", [...git, "--exclude-standard"]);
  for (const rel of listed.split("\0").filter(Boolean)) {
    if (!existsSync(join(ROOT, rel))) continue; // deleted in the work tree
    mkdirSync(dirname(join(dest, rel)), { recursive: true });
    copyFileSync(join(ROOT, rel), join(dest, rel));
  }
  // node_modules must be physically inside (a symlink out would make the binaries reachable
  // again). Hard links are instant on the same filesystem; a real copy otherwise.
  const from = join(ROOT, "node_modules");
  const to = join(dest, "node_modules");
  if (spawnSync("cp", ["-al", from, to]).status !== 0) {
    rmSync(to, { recursive: true, force: true });
    mustRun("cp", ["-a", from, to]);
  }
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

  it("passes the smoke subset", { timeout: 240_000 }, async () => {
    // Named like the harness's process roots (pgdbpool-<pid>-...) so that, should this process
    // be killed, a later run's reaping removes them (datadir.ts).
    const prefix = join(tmpdir(), `pgdbpool-${process.pid}-anywhere-`);
    const outer = mkdtempSync(prefix); // mode 700: the point of the test
    // The inner run's TMPDIR: traversable, and fresh, so the binaries copy is made from scratch.
    const innerTmp = mkdtempSync(prefix);
    chmodSync(innerTmp, 0o755);
    try {
      const project = join(outer, "project");
      copyProject(project);
      const bun = "Bun" in globalThis;
      const cmd = bun ? bunBin() : denoBin();
      const args = bun
        ? ["scripts/test.mjs", "--smoke"]
        : ["run", "-A", "scripts/test.mjs", "--smoke"];
      const started = Date.now();
      const r = await runCommand(cmd, args, {
        cwd: project,
        timeoutMs: INNER_DEADLINE_MS,
        env: {
          TMPDIR: innerTmp,
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
      killAll(outer);
      killAll(innerTmp);
      rmSync(outer, { recursive: true, force: true });
      rmSync(innerTmp, { recursive: true, force: true });
    }
  });
});

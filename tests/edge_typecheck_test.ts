// The edge entry must type-check with only the `esnext` and `webworker` libs: no Deno namespace,
// no DOM, and no Node/Bun globals (postgres.js's own types import node:stream, but that does
// not declare Node globals such as `process` or `Buffer` for our code).
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { setTestTimeout } from "./harness/runtime.ts";
import { denoBin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(180_000);

let dir: string;
let config: string;

before(() => {
  dir = mkdtempSync(join(tmpdir(), "pgdbpool-edge-check-"));
  config = join(dir, "deno.json");
  // Same import map as the project; only the libs differ.
  const deno = {
    imports: { postgres: "npm:postgres@^3.4.9" },
    nodeModulesDir: "manual",
    compilerOptions: { lib: ["esnext", "webworker"] },
  };
  writeFileSync(config, JSON.stringify(deno, null, 2));
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function check(file: string) {
  return runCommand(denoBin(), ["check", "--config", config, file], {
    cwd: ROOT,
    timeoutMs: 150_000,
  });
}

describe("edge entry", () => {
  it("type-checks with only the esnext and webworker libs", async () => {
    const r = await check(join(ROOT, "edge.ts"));
    assert.equal(
      r.code,
      0,
      `deno check edge.ts (lib: esnext, webworker) failed:\n${r.stdout}${r.stderr}`,
    );
  });

  it("the same configuration rejects Deno, DOM, Node and Bun globals (control)", async () => {
    const probe = join(dir, "probe.ts");
    writeFileSync(
      probe,
      [
        `import { Pool } from ${JSON.stringify(pathToFileURL(join(ROOT, "edge.ts")).href)};`,
        `export const p: typeof Pool = Pool;`,
        `export const a = Deno.env;`,
        `export const b = document.title;`,
        `export const c = process.env;`,
        `export const d = Buffer.from("x");`,
        `export const e = Bun.version;`,
        "",
      ].join("\n"),
    );
    const r = await check(probe);
    const out = r.stdout + r.stderr;
    assert.notEqual(r.code, 0, `the probe unexpectedly type-checked:\n${out}`);
    for (const name of ["Deno", "document", "process", "Buffer", "Bun"]) {
      assert.match(
        out,
        new RegExp(`Cannot find name '${name}'`),
        `${name} should be unknown:\n${out}`,
      );
    }
    // Only the probe's own lines fail: edge.ts and src/ are clean.
    assert.doesNotMatch(out, /at file:\/\/\S*\/(edge|mod)\.ts|at file:\/\/\S*\/src\//, out);
  });
});

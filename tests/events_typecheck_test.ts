// `pool.addEventListener(type, fn)` is typed per event: the fixture type-checks with no cast,
// and a field an event does not have is a type error (control).
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { setTestTimeout } from "./harness/runtime.ts";
import { denoBin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(180_000);

const dir = mkdtempSync(join(tmpdir(), "pgdbpool-events-check-"));
after(() => rmSync(dir, { recursive: true, force: true }));

const check = (file: string) =>
  runCommand(denoBin(), ["check", "--config", join(ROOT, "deno.json"), file], {
    cwd: ROOT,
    timeoutMs: 150_000,
  });

describe("typed events", () => {
  it("every event type's listener gets its exact detail with no cast", async () => {
    const r = await check(join(ROOT, "tests", "fixtures", "typed_events.ts"));
    assert.equal(r.code, 0, `${r.stdout}${r.stderr}`);
  });

  it("a field the event does not carry is a type error (control)", async () => {
    const bad = join(dir, "bad.ts");
    const mod = JSON.stringify(pathToFileURL(join(ROOT, "mod.ts")).href);
    writeFileSync(
      bad,
      `import type { Pool } from ${mod};\n` +
        `export const f = (p: Pool) => p.addEventListener("endpointup", (e) => e.detail.reason.length);\n`,
    );
    const r = await check(bad);
    assert.notEqual(r.code, 0);
    assert.match(`${r.stdout}${r.stderr}`, /Property 'reason' does not exist/);
  });
});

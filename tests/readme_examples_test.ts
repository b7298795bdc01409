// README examples must not rot: every ```ts block of README.md right after the mark below (an
// HTML comment, so invisible on GitHub and JSR) is a complete program, and `deno check`
// type-checks it against this checkout. An import map in a temporary directory sends
// `jsr:@x/pgdbpool` and `@x/pgdbpool` (and every sub-entry of deno.json "exports") to the local
// files; `npm:` imports resolve from this checkout's node_modules (linked into that directory).
// Blocks without the mark are fragments and are not checked.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { setTestTimeout } from "./harness/runtime.ts";
import { denoBin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(180_000);

const MARK = "<!-- type-checked by tests/readme_examples_test.ts -->";

/** Sections whose examples must be complete programs (a mark dropped by mistake fails here). */
const COMPLETE = ["Leak detection", "LISTEN/NOTIFY", "OpenTelemetry", "Drizzle", "Kysely"];

interface Example {
  /** 1-based line of the opening fence in README.md. */
  readonly line: number;
  /** The heading the block is under. */
  readonly section: string;
  readonly code: string;
}

/** The marked ```ts blocks of `markdown`; throws on a mark that no ```ts block follows. */
function markedExamples(markdown: string): Example[] {
  const lines = markdown.split("\n");
  const examples: Example[] = [];
  let section = "";
  let marked = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("```")) {
      const end = lines.indexOf("```", i + 1);
      assert.ok(end > i, `README.md:${i + 1}: unclosed code block`);
      if (marked) {
        assert.equal(line, "```ts", `README.md:${i + 1}: the mark must precede a \`\`\`ts block`);
        examples.push({ line: i + 1, section, code: lines.slice(i + 1, end).join("\n") + "\n" });
      }
      marked = false;
      i = end;
      continue;
    }
    const heading = /^#+\s+(.*)$/.exec(line);
    if (heading) section = heading[1].trim();
    if (line.trim() === MARK) {
      marked = true;
    } else if (line.trim() !== "") {
      assert.ok(!marked, `README.md:${i}: the mark must be right above a \`\`\`ts block`);
    }
  }
  assert.ok(!marked, "README.md ends with a mark and no block");
  return examples;
}

const examples = markedExamples(readFileSync(join(ROOT, "README.md"), "utf8"));

describe("README examples", () => {
  it("the examples of the Drizzle, Kysely, OpenTelemetry, LISTEN/NOTIFY and leak detection sections are marked complete", () => {
    const sections = new Set(examples.map((e) => e.section));
    for (const section of COMPLETE) {
      assert.ok(sections.has(section), `no checked example under "${section}"`);
    }
  });

  if ("Bun" in globalThis) {
    it("type-check against the local sources", {
      skip:
        "run under Deno only: the check is `deno check` either way, and Bun would only repeat it",
    }, () => {});
  } else {
    typeCheck();
  }
});

function typeCheck(): void {
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "pgdbpool-readme-"));
    const deno = JSON.parse(readFileSync(join(ROOT, "deno.json"), "utf8"));
    const imports: Record<string, string> = { ...deno.imports };
    for (const [key, source] of Object.entries(deno.exports as Record<string, string>)) {
      const name = key === "." ? deno.name : `${deno.name}${key.slice(1)}`;
      const local = pathToFileURL(join(ROOT, source)).href;
      imports[name] = local;
      imports[`jsr:${name}`] = local;
    }
    writeFileSync(
      join(dir, "deno.json"),
      JSON.stringify({ imports, nodeModulesDir: "manual", compilerOptions: deno.compilerOptions }),
    );
    // "manual" looks for node_modules next to the configuration.
    symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"), "dir");
  });

  after(() => {
    if (!dir) return;
    // The link first, on its own: a recursive removal must never reach the checkout's modules.
    try {
      unlinkSync(join(dir, "node_modules"));
    } catch {
      // not created
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("type-check against the local sources (and a broken control example fails)", async () => {
    const files = examples.map((e) => {
      const file = join(dir, `readme_line_${e.line}.ts`);
      writeFileSync(file, e.code);
      return file;
    });
    // The control proves that the check runs and reports: its error must be the only one.
    const control = join(dir, "control.ts");
    writeFileSync(
      control,
      `import { Pool } from "jsr:@x/pgdbpool";\nexport const pool: Pool = "not a pool";\n`,
    );
    const r = await runCommand(denoBin(), [
      "check",
      "--config",
      join(dir, "deno.json"),
      ...files,
      control,
    ], {
      cwd: dir,
      timeoutMs: 150_000,
    });
    const out = r.stdout + r.stderr;
    const failing = new Set(
      [...out.matchAll(/at file:\/\/\S*\/([^/\s]+\.ts):\d+:\d+/g)].map((m) => m[1]),
    );
    assert.notEqual(r.code, 0, `the control example type-checked:\n${out}`);
    assert.ok(failing.has("control.ts"), `no error reported for the control example:\n${out}`);
    failing.delete("control.ts");
    // readme_line_N.ts is the block whose fence is on README.md line N.
    assert.deepEqual([...failing], [], `README examples that do not type-check:\n${out}`);
    assert.match(out, /TS2322/, out);
  });
}

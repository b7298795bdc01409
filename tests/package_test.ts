// Package metadata: deno.json (read by `deno publish`), jsr.json (read by `npx jsr publish`) and
// package.json (npm) must describe the same package; the JSR dry run must pass without escape
// hatches, and the public API must be fully documented.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { setTestTimeout } from "./harness/runtime.ts";
import { denoBin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(180_000);

// deno-lint-ignore no-explicit-any
type Json = any;
const readJson = (file: string): Json => JSON.parse(readFileSync(join(ROOT, file), "utf8"));

// Every entry point of deno.json "exports" ("./mod.ts", "./edge.ts", "./otel.ts", ...).
const ENTRIES: string[] = Object.values(readJson("deno.json").exports as Record<string, string>)
  .map((source) => source.replace(/^\.\//, ""));
const FORBIDDEN = /^(tests|bench|examples|fixtures|scripts|\.ci)\//;

describe("package metadata", () => {
  const deno = readJson("deno.json");
  const jsr = readJson("jsr.json");
  const pkg = readJson("package.json");

  it("deno.json and jsr.json agree on name, version, licence, exports and publish", () => {
    assert.equal(deno.name, "@x/pgdbpool");
    assert.match(deno.version, /^\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$/);
    for (const key of ["name", "version", "license", "exports"]) {
      assert.deepEqual(jsr[key], deno[key], `jsr.json "${key}" differs from deno.json`);
    }
    assert.deepEqual(jsr.publish?.include, deno.publish?.include, "publish.include differs");
    assert.deepEqual(jsr.publish?.exclude, deno.publish?.exclude, "publish.exclude differs");
    // "." is mod.ts; every other entry "./name" is name.ts at the root.
    for (const [key, source] of Object.entries(deno.exports)) {
      assert.equal(source, key === "." ? "./mod.ts" : `${key}.ts`, `exports["${key}"]`);
    }
    assert.equal(deno.exports["./edge"], "./edge.ts");
  });

  it("publishes sources, README and LICENSE only", () => {
    const include: string[] = deno.publish.include;
    for (const entry of [...ENTRIES, "LICENSE", "README.md"]) {
      assert.ok(include.includes(entry), `publish.include lacks ${entry}`);
    }
    for (const pattern of include) {
      assert.doesNotMatch(pattern, FORBIDDEN, `publish.include must not list ${pattern}`);
      assert.notEqual(pattern, ".", "publish.include must not list the whole directory");
    }
    assert.match(
      readFileSync(join(ROOT, "LICENSE"), "utf8"),
      /MIT License[\s\S]*Copyright \(c\) 2026 pgdbpool authors/,
    );
  });

  it("package.json agrees with deno.json", () => {
    assert.equal(pkg.name, deno.name);
    assert.equal(pkg.version, deno.version);
    assert.equal(pkg.license, deno.license ?? "MIT");
    assert.deepEqual(Object.keys(pkg.exports).sort(), Object.keys(deno.exports).sort());
    for (const [key, source] of Object.entries(deno.exports)) {
      const entry = pkg.exports[key];
      assert.equal(
        typeof entry,
        "object",
        `package.json exports["${key}"] must be a condition map`,
      );
      // Types and Bun use the TypeScript source JSR publishes; everything else the built file.
      assert.equal(entry.types, source, `exports["${key}"].types`);
      assert.equal(entry.bun, source, `exports["${key}"].bun`);
      const built = `./dist/${(source as string).replace(/^\.\//, "").replace(/\.ts$/, ".js")}`;
      assert.equal(entry.default, built, `exports["${key}"].default`);
      assert.equal(
        Object.keys(entry).at(-1),
        "default",
        `exports["${key}"]: "default" must come last`,
      );
    }
    for (const file of pkg.files as string[]) {
      assert.doesNotMatch(file, FORBIDDEN, `package.json files must not list ${file}`);
    }
    assert.equal(pkg.scripts?.prepack, "node scripts/build_npm.mjs");
  });
});

describe("JSR publishing", () => {
  it("deno publish --dry-run passes with no slow types and no escape hatch", async () => {
    // --allow-dirty only skips the git-clean check (the working tree is dirty during development).
    const r = await runCommand(denoBin(), ["publish", "--dry-run", "--allow-dirty"], {
      timeoutMs: 150_000,
    });
    const out = r.stdout + r.stderr;
    assert.equal(r.code, 0, `deno publish --dry-run failed:\n${out}`);
    assert.match(out, /Success Dry run complete/);
    // The slow-type check ran and found nothing; no diagnostics (errors or warnings) at all.
    assert.match(out, /Checking for slow types in the public API/);
    assert.doesNotMatch(out, /^\s*(error|warning)\[/m);
    const published = [...out.matchAll(/^\s+file:\/\/(\S+) \(/gm)].map((m) =>
      m[1].slice(ROOT.length + 1)
    );
    assert.ok(published.length > 0, `no file list in:\n${out}`);
    for (const entry of [...ENTRIES, "LICENSE"]) {
      assert.ok(published.includes(entry), `${entry} is not published: ${published.join(", ")}`);
    }
    for (const file of published) {
      assert.ok(
        file === "deno.json" || file === "jsr.json" || file === "README.md" || file === "LICENSE" ||
          ENTRIES.includes(file) || /^src\/([a-z_]+\/)?[^/]+\.ts$/.test(file),
        `unexpected published file ${file}`,
      );
    }
  });

  it("deno doc --lint reports nothing for the entry points", async () => {
    const r = await runCommand(denoBin(), ["doc", "--lint", ...ENTRIES], { timeoutMs: 120_000 });
    // Every diagnostic counts, and so does the exit code. (The one reference to another
    // package's type, Drizzle's PgDatabase, is exempt at its import in src/drizzle/database.ts.)
    const out = r.stdout + r.stderr;
    const diagnostics = out.split(/\n(?=error)/).filter((d) => /^error\[/.test(d.trim()));
    assert.deepEqual(diagnostics, [], `deno doc --lint found problems:\n${diagnostics.join("\n")}`);
    assert.equal(r.code, 0, `deno doc --lint failed:\n${out}`);
  });

  it("the @example blocks of the published sources type-check", async () => {
    const sources = readdirSync(join(ROOT, "src"), { recursive: true, encoding: "utf8" })
      .filter((f) => f.endsWith(".ts")).map((f) => join("src", f));
    const r = await runCommand(denoBin(), ["check", "--doc", ...ENTRIES, ...sources], {
      timeoutMs: 150_000,
    });
    assert.equal(r.code, 0, `deno check --doc failed:\n${r.stdout}${r.stderr}`);
  });

  it("every export has a doc comment with an @example", async () => {
    const r = await runCommand(denoBin(), ["doc", "--json", ...ENTRIES], { timeoutMs: 120_000 });
    assert.equal(r.code, 0, r.stderr);
    const doc = JSON.parse(r.stdout);
    // deno doc 2.x: { version, nodes: { [specifier]: { module_doc, symbols: [{ name, declarations }] } } }
    const modules = Object.entries(doc.nodes as Record<string, Json>);
    assert.equal(modules.length, ENTRIES.length);
    const defined = new Map<string, Json[]>();
    for (const [, m] of modules) {
      for (const s of m.symbols) {
        const own = s.declarations.filter((d: Json) => d.kind !== "reference");
        if (own.length > 0) defined.set(s.name, own);
      }
    }
    const missing: string[] = [];
    const hasExample = (jsDoc: Json) =>
      jsDoc?.tags?.some((t: Json) => t.kind === "example") ?? false;
    for (const [specifier, m] of modules) {
      const file = specifier.slice(specifier.lastIndexOf("/") + 1);
      if (!m.module_doc?.doc || !hasExample(m.module_doc)) {
        missing.push(`${file} (no module doc with @example)`);
      }
      for (const s of m.symbols) {
        // Re-exports ("reference" declarations) are judged by their definition.
        const decls = s.declarations.some((d: Json) => d.kind !== "reference")
          ? s.declarations
          : defined.get(s.name) ?? s.declarations;
        // Named once, by symbol (edge.ts re-exports mod.ts).
        if (!decls.some((d: Json) => d.jsDoc?.doc)) missing.push(`${s.name} (no doc comment)`);
        else if (!decls.some((d: Json) => hasExample(d.jsDoc))) {
          missing.push(`${s.name} (no @example)`);
        }
      }
    }
    assert.deepEqual([...new Set(missing)], [], "exports without a documented @example");
  });
});

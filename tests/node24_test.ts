// The npm package under Node 24 (npm package `node@24`): installed the way npm would (the files
// `npm pack` selects, plus dist/ from scripts/build_npm.mjs), imported by name through
// package.json "exports", running queries against the test server.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import {
  cpSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { node24Bin, ROOT, runCommand } from "./tools.ts";

await setTestTimeout(180_000);

const APP = "node24_test";
let cluster: PgCluster;
let dir: string;
let pkgDir: string;
let node: string;

before(async () => {
  node = node24Bin();
  cluster = await startCluster({ replicas: 0 });
  await cluster.primary.query("CREATE TABLE node_items (id serial PRIMARY KEY, v text NOT NULL)");

  dir = mkdtempSync(join(tmpdir(), "pgdbpool-node24-"));
  pkgDir = join(dir, "node_modules", "@x", "pgdbpool");
  mkdirSync(pkgDir, { recursive: true });
  // The files `npm pack` would ship (scripts ignored: dist/ is built below, outside the repo).
  const pack = await runCommand("npm", ["pack", "--dry-run", "--json", "--ignore-scripts"], {
    timeoutMs: 60_000,
  });
  assert.equal(pack.code, 0, `npm pack --dry-run failed:\n${pack.stderr}`);
  const files: string[] = JSON.parse(pack.stdout)[0].files.map((f: { path: string }) => f.path);
  for (const file of files) {
    mkdirSync(dirname(join(pkgDir, file)), { recursive: true });
    cpSync(join(ROOT, file), join(pkgDir, file));
  }
  const build = await runCommand(node, [
    join(ROOT, "scripts", "build_npm.mjs"),
    join(pkgDir, "dist"),
  ], { timeoutMs: 60_000 });
  assert.equal(build.code, 0, `build_npm.mjs failed:\n${build.stdout}${build.stderr}`);
  // The dependency, as npm would have installed it next to the package.
  symlinkSync(join(ROOT, "node_modules", "postgres"), join(dir, "node_modules", "postgres"), "dir");
  // The optional peer dependency of @x/pgdbpool/otel, and the SDK the check reads spans from.
  symlinkSync(
    join(ROOT, "node_modules", "@opentelemetry"),
    join(dir, "node_modules", "@opentelemetry"),
    "dir",
  );
  // The optional peer dependencies of @x/pgdbpool/drizzle and @x/pgdbpool/kysely.
  for (const peer of ["drizzle-orm", "kysely"]) {
    symlinkSync(join(ROOT, "node_modules", peer), join(dir, "node_modules", peer), "dir");
  }
  writeFileSync(
    join(dir, "package.json"),
    JSON.stringify({ name: "consumer", private: true, type: "module" }),
  );
}, { timeout: 120_000 });

after(async () => {
  if (dir) rmSync(dir, { recursive: true, force: true });
  await cluster?.close();
}, { timeout: 60_000 });

const SCRIPT = `
import assert from "node:assert/strict";
import { Pool, PoolError, PoolClosedError, Handler, Connection } from "@x/pgdbpool";
import * as edge from "@x/pgdbpool/edge";

const out = { node: process.version, resolved: import.meta.resolve("@x/pgdbpool"), edgeResolved: import.meta.resolve("@x/pgdbpool/edge") };
const pool = new Pool({
  db: JSON.parse(process.env.PGDBPOOL_DB),
  groups: { auto: { connection_count: 2 }, tx: { connection_count: 1, autocommit: false } },
  application_name: process.env.PGDBPOOL_APP,
});
const [row] = await pool.query("auto", "SELECT $1::int + 1 AS n, inet_server_port() AS port", [41]);
out.n = row.n;
out.port = row.port;
{
  // Explicit resource management runs natively on Node 24.
  await using db = pool.handler("tx");
  await db.query("INSERT INTO node_items (v) VALUES ($1)", ["from-node"]);
  await db.commit();
}
out.rows = (await pool.query("auto", "SELECT v FROM node_items")).map((r) => r.v);
out.handler = pool.handler("auto") instanceof Handler;
out.edgeSharesClasses = edge.PoolError === PoolError && edge.Handler === Handler &&
  Object.getPrototypeOf(edge.Connection) === Connection;
out.edgePoolIsPool = new edge.Pool({ db: JSON.parse(process.env.PGDBPOOL_DB), groups: { g: { connection_count: 1 } } }) instanceof Pool;
{
  // @x/pgdbpool/otel: spans reach the SDK's in-memory exporter.
  const { instrument } = await import("@x/pgdbpool/otel");
  const sdk = await import("@opentelemetry/sdk-trace-base");
  const exporter = new sdk.InMemorySpanExporter();
  const tracerProvider = new sdk.BasicTracerProvider({
    spanProcessors: [new sdk.SimpleSpanProcessor(exporter)],
  });
  out.otelResolved = import.meta.resolve("@x/pgdbpool/otel");
  using _otel = instrument(pool, { tracerProvider });
  await pool.query("auto", "SELECT 1");
  out.spans = exporter.getFinishedSpans().map((s) => [s.name, s.attributes["server.port"]]);
}
await pool.close();
await assert.rejects(pool.query("auto", "SELECT 1"), PoolClosedError);
console.log(JSON.stringify(out));
`;

const BUILDERS_SCRIPT = `
import { Pool } from "@x/pgdbpool";
import { drizzle, PgdbpoolDatabase } from "@x/pgdbpool/drizzle";
import { PgdbpoolDialect } from "@x/pgdbpool/kysely";
import { DrizzleQueryError, sql } from "drizzle-orm";
import { pgTable, serial, text } from "drizzle-orm/pg-core";
import { Kysely } from "kysely";

const out = {
  drizzle: import.meta.resolve("@x/pgdbpool/drizzle"),
  kysely: import.meta.resolve("@x/pgdbpool/kysely"),
  checks: {},
};
const pool = new Pool({
  db: JSON.parse(process.env.PGDBPOOL_DB),
  groups: { write: { connection_count: 2, autocommit: false }, read: { connection_count: 2 } },
  application_name: process.env.PGDBPOOL_APP,
});
const items = pgTable("node_items", { id: serial().primaryKey(), v: text().notNull() });
const db = drizzle(pool, { group: "write", read: "read" });
out.checks.database = db instanceof PgdbpoolDatabase;
await db.insert(items).values({ v: "drizzle" });
await db.transaction(async (tx) => {
  await tx.insert(items).values({ v: "drizzle-tx" });
});
out.checks.drizzleRows = (await db.select({ v: items.v }).from(items)
  .where(sql\`\${items.v} LIKE 'drizzle%'\`).orderBy(items.v)).map((r) => r.v);
out.checks.drizzleError = await db.execute(sql\`SELECT 1 / 0\`)
  .then(() => "none", (err) => err instanceof DrizzleQueryError ? err.cause.code : String(err));
const k = new Kysely({ dialect: new PgdbpoolDialect({ pool, group: "write", read: "read" }) });
await k.insertInto("node_items").values({ v: "kysely" }).execute();
out.checks.kyselyRows = (await k.selectFrom("node_items").select("v").where("v", "=", "kysely")
  .execute()).map((r) => r.v);
out.checks.kyselyStream = [];
for await (const r of k.selectFrom("node_items").select("v").where("v", "like", "k%").stream(1)) {
  out.checks.kyselyStream.push(r.v);
}
await k.destroy();
out.checks.poolOpenAfterDestroy = !pool.closed;
await pool.close();
console.log(JSON.stringify(out));
`;

describe("npm package under Node 24", () => {
  it("imports the package through package.json exports and runs queries", async () => {
    writeFileSync(join(dir, "check.mjs"), SCRIPT);
    const r = await runCommand(node, ["check.mjs"], {
      cwd: dir,
      env: { PGDBPOOL_DB: JSON.stringify(cluster.endpoints()), PGDBPOOL_APP: APP },
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, `node check.mjs failed:\n${r.stdout}${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assert.match(out.node, /^v24\./);
    assert.ok(out.resolved.endsWith("/node_modules/@x/pgdbpool/dist/mod.js"), out.resolved);
    assert.ok(
      out.edgeResolved.endsWith("/node_modules/@x/pgdbpool/dist/edge.js"),
      out.edgeResolved,
    );
    assert.equal(out.n, 42);
    assert.equal(out.port, cluster.primary.port);
    assert.deepEqual(out.rows, ["from-node"]);
    assert.equal(out.handler, true);
    assert.equal(
      out.edgeSharesClasses,
      true,
      "mod and edge must share one chunk (instanceof across entries)",
    );
    assert.equal(out.edgePoolIsPool, true);
    assert.ok(
      out.otelResolved.endsWith("/node_modules/@x/pgdbpool/dist/otel.js"),
      out.otelResolved,
    );
    assert.deepEqual(out.spans, [[`SELECT ${cluster.database}`, cluster.primary.port]]);
    // Only dist/otel.js loads the OpenTelemetry API: the main entry's files never import it.
    const built = readdirSync(join(pkgDir, "dist")).filter((f) => f.endsWith(".js"));
    for (const file of built.filter((f) => f !== "otel.js")) {
      assert.doesNotMatch(readFileSync(join(pkgDir, "dist", file), "utf8"), /@opentelemetry/, file);
    }
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 10_000,
      message: `no connection with application_name ${APP}`,
    });
  });

  it("runs @x/pgdbpool/drizzle and @x/pgdbpool/kysely from the build", async () => {
    writeFileSync(join(dir, "check_builders.mjs"), BUILDERS_SCRIPT);
    const r = await runCommand(node, ["check_builders.mjs"], {
      cwd: dir,
      env: { PGDBPOOL_DB: JSON.stringify(cluster.endpoints()), PGDBPOOL_APP: APP },
      timeoutMs: 60_000,
    });
    assert.equal(r.code, 0, `node check_builders.mjs failed:\n${r.stdout}${r.stderr}`);
    const out = JSON.parse(r.stdout.trim().split("\n").at(-1)!);
    assert.ok(out.drizzle.endsWith("/node_modules/@x/pgdbpool/dist/drizzle.js"), out.drizzle);
    assert.ok(out.kysely.endsWith("/node_modules/@x/pgdbpool/dist/kysely.js"), out.kysely);
    assert.deepEqual(out.checks, {
      database: true,
      drizzleRows: ["drizzle", "drizzle-tx"],
      drizzleError: "22012",
      kyselyRows: ["kysely"],
      kyselyStream: ["kysely"],
      poolOpenAfterDestroy: true,
    });
    // Only their own entries load the query builders.
    for (const file of readdirSync(join(pkgDir, "dist")).filter((f) => f.endsWith(".js"))) {
      if (file === "drizzle.js" || file === "kysely.js") continue;
      const text = readFileSync(join(pkgDir, "dist", file), "utf8");
      assert.doesNotMatch(text, /from "(drizzle-orm|kysely)/, file);
    }
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 10_000,
      message: `no connection with application_name ${APP}`,
    });
  });

  it("needs the build: Node does not strip types of .ts files inside node_modules", async () => {
    // Why package.json's "default" condition points at dist/ and not at mod.ts.
    const r = await runCommand(node, [
      "--input-type=module",
      "-e",
      `await import(${JSON.stringify(join(pkgDir, "mod.ts"))})`,
    ], {
      cwd: dir,
      timeoutMs: 30_000,
    });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /ERR_UNSUPPORTED_NODE_MODULES_TYPE_STRIPPING/);
  });
});

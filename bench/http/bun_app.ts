/**
 * The TechEmpower-style app on `Bun.serve` (routes in bench/http/tfb.ts), in one of three
 * variants: `--variant pool` (pgdbpool, `pool.query`, postgres.js driver), `--variant pool-bun`
 * (the same with `driver: "bun"`, once the pool accepts it) or `--variant direct` (Bun's `SQL`
 * with tagged templates, `new SQL({ max: 10 })`). Each holds 10 connections to the primary of
 * `$PGDBPOOL_BENCH_ENDPOINTS`, opened before the app prints `READY <port>` on stdout.
 *
 * `bun bench/http/bun_app.ts --variant pool [--port 0]`; SIGTERM closes it.
 *
 * @module
 */

import process from "node:process";
import { ENDPOINTS_VAR } from "../names.ts";
import { APP, CONNECTIONS, openPool, poolDb, warmPool } from "./pool_db.ts";
import { directDb, warmDirect } from "./direct_db.ts";
import { type Db, route } from "./tfb.ts";

interface BunSql {
  <T>(strings: TemplateStringsArray, ...values: unknown[]): Promise<T>;
  reserve(): Promise<BunSql & { release(): void }>;
  close(options?: { timeout?: number }): Promise<void>;
}
interface BunApi {
  SQL: new (options: Record<string, unknown>) => BunSql;
  serve(options: {
    hostname: string;
    port: number;
    fetch(request: Request): Promise<Response>;
  }): { port: number; stop(force?: boolean): Promise<void> };
}
const Bun = (globalThis as unknown as { Bun: BunApi }).Bun;

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i === -1 ? fallback : process.argv[i + 1];
}

const variant = arg("variant", "pool");
const port = Number(arg("port", "0"));
const primary = JSON.parse(process.env[ENDPOINTS_VAR] ?? "[]")[0];
if (primary === undefined) throw new Error(`${ENDPOINTS_VAR} is not set`);

let db: Db;
let close: () => Promise<unknown>;
if (variant === "pool" || variant === "pool-bun") {
  const pool = openPool(variant, primary);
  await warmPool(pool);
  db = poolDb(pool);
  close = () => pool.close();
} else if (variant === "direct") {
  const sql = new Bun.SQL({
    hostname: primary.host,
    port: primary.port,
    database: primary.name,
    username: primary.user,
    password: primary.pass,
    max: CONNECTIONS,
    idleTimeout: 0,
    maxLifetime: 0,
    connection: { application_name: APP },
  });
  await warmDirect(sql);
  db = directDb(sql);
  close = () => sql.close({ timeout: 1 });
} else {
  throw new Error(`--variant must be pool, pool-bun or direct (got ${variant})`);
}

const server = Bun.serve({
  hostname: "127.0.0.1",
  port,
  fetch: (request) => route(db, request),
});
console.log(`READY ${server.port}`);

process.on("SIGTERM", async () => {
  await server.stop(true);
  await close();
  process.exit(0);
});

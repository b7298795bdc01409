/**
 * The TechEmpower-style app on `Deno.serve` (routes in bench/http/tfb.ts), in one of two
 * variants: `--variant pool` (pgdbpool, `pool.query`) or `--variant direct` (postgres.js with
 * tagged templates, `postgres({ max: 10 })`). Both hold 10 connections to the primary of
 * `$PGDBPOOL_BENCH_ENDPOINTS`, opened before the app prints `READY <port>` on stdout.
 *
 * `deno run -A bench/http/deno_app.ts --variant pool [--port 0]`; SIGTERM closes it.
 *
 * @module
 */

import postgres from "postgres";
import { ENDPOINTS_VAR } from "../names.ts";
import { APP, CONNECTIONS, openPool, poolDb, warmPool } from "./pool_db.ts";
import { directDb, warmDirect } from "./direct_db.ts";
import { type Db, route } from "./tfb.ts";

function arg(name: string, fallback: string): string {
  const i = Deno.args.indexOf(`--${name}`);
  return i === -1 ? fallback : Deno.args[i + 1];
}

const variant = arg("variant", "pool");
const port = Number(arg("port", "0"));
const primary = JSON.parse(Deno.env.get(ENDPOINTS_VAR) ?? "[]")[0];
if (primary === undefined) throw new Error(`${ENDPOINTS_VAR} is not set`);

let db: Db;
let close: () => Promise<unknown>;
if (variant === "pool") {
  const pool = openPool("pool", primary);
  await warmPool(pool);
  db = poolDb(pool);
  close = () => pool.close();
} else if (variant === "direct") {
  const sql = postgres({
    host: primary.host,
    port: primary.port,
    database: primary.name,
    username: primary.user,
    password: primary.pass,
    max: CONNECTIONS,
    idle_timeout: 0,
    max_lifetime: null,
    connection: { application_name: APP },
  });
  await warmDirect(sql);
  db = directDb(sql);
  close = () => sql.end({ timeout: 1 });
} else {
  throw new Error(`--variant must be pool or direct (got ${variant})`);
}

const server = Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen: ({ port }) => console.log(`READY ${port}`),
}, (request) => route(db, request));

Deno.addSignalListener("SIGTERM", async () => {
  await server.shutdown();
  await close();
  Deno.exit(0);
});

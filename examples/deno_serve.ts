/**
 * `deno serve --parallel`: one pool per isolate, non-threaded mode.
 *
 * ```sh
 * PGDBPOOL_DB='postgres://app:secret@127.0.0.1:5432/app' \
 *   deno serve --parallel --port 8000 --allow-net --allow-env examples/deno_serve.ts
 * ```
 *
 * `deno serve --parallel` evaluates this module once per isolate (one per core, or
 * `DENO_JOBS`), all in one process, each with its own pool. Requests of one isolate run
 * concurrently on its event loop, so the group holds as many connections as requests an isolate
 * may serve at once; in non-threaded mode a request beyond that fails at once
 * (`PoolExhaustedError`, answered here with 503) instead of queueing.
 *
 * Every isolate listens for SIGINT and SIGTERM itself (Deno delivers a signal to each isolate
 * that listens) and closes its pool; with no connection left open, the process exits.
 *
 * Environment:
 * - `PGDBPOOL_DB`: a `postgres://` URL, or a JSON endpoint object or array (required)
 * - `PGDBPOOL_CONNECTIONS`: connections per isolate (default 8)
 * - `PGDBPOOL_APP`: `application_name` (default `pgdbpool-deno-serve`)
 *
 * Routes: `GET /query?n=1` answers `{ n, port, isolate }` from `SELECT $1`; `GET /health`.
 *
 * @module
 */

import { Pool, PoolExhaustedError } from "../mod.ts";
import type { EndpointConfig } from "../mod.ts";

function dbFromEnv(): string | EndpointConfig | EndpointConfig[] {
  const raw = Deno.env.get("PGDBPOOL_DB");
  if (!raw) throw new Error("set PGDBPOOL_DB to a postgres:// URL or a JSON endpoint list");
  return raw.trimStart().startsWith("postgres") ? raw : JSON.parse(raw);
}

const isolate = crypto.randomUUID().slice(0, 8);
const pool = new Pool({
  type: "non-threaded",
  db: dbFromEnv(),
  groups: { default: { connection_count: Number(Deno.env.get("PGDBPOOL_CONNECTIONS") ?? 8) } },
  application_name: Deno.env.get("PGDBPOOL_APP") ?? "pgdbpool-deno-serve",
});

function shutdown(signal: Deno.Signal): void {
  if (pool.closed) return;
  console.log(`isolate ${isolate}: ${signal}, closing the pool`);
  pool.close().then(() => {
    console.log(`isolate ${isolate}: pool closed`);
    // Nothing keeps this isolate's event loop busy any more.
    Deno.removeSignalListener("SIGINT", onSigint);
    Deno.removeSignalListener("SIGTERM", onSigterm);
  });
}
const onSigint = () => shutdown("SIGINT");
const onSigterm = () => shutdown("SIGTERM");
Deno.addSignalListener("SIGINT", onSigint);
Deno.addSignalListener("SIGTERM", onSigterm);
console.log(`isolate ${isolate}: ready`);

export default {
  async fetch(request: Request): Promise<Response> {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    if (url.pathname !== "/query") return new Response("not found", { status: 404 });
    if (pool.closed) return new Response("shutting down", { status: 503 });
    try {
      const n = Number(url.searchParams.get("n") ?? 1);
      const rows = await pool.query<{ n: number; port: number }>(
        "default",
        "SELECT $1::int AS n, inet_server_port() AS port",
        [n],
      );
      return Response.json({ n: rows[0].n, port: rows[0].port, isolate });
    } catch (err) {
      if (err instanceof PoolExhaustedError) return new Response(err.message, { status: 503 });
      return Response.json({ error: (err as Error).message }, { status: 500 });
    }
  },
} satisfies Deno.ServeDefaultExport;

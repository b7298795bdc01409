/**
 * `Deno.serve` with one shared pool in threaded mode: requests beyond the group's connections
 * wait in FIFO order (up to `acquire_timeout_ms`) instead of failing.
 *
 * ```sh
 * PGDBPOOL_DB='postgres://app:secret@127.0.0.1:5432/app' PORT=8000 \
 *   deno run --allow-net --allow-env examples/deno_threaded.ts
 * ```
 *
 * On SIGINT or SIGTERM it stops accepting requests, lets those in flight finish, closes the
 * pool and exits. (Without its own signal listeners, Deno does not stop a server that holds
 * open database connections.)
 *
 * Environment:
 * - `PGDBPOOL_DB`: a `postgres://` URL, or a JSON endpoint object or array (required)
 * - `PORT`: TCP port (default 8000; 0 picks a free one); `HOSTNAME` (default 127.0.0.1)
 * - `PGDBPOOL_CONNECTIONS`: connections of the group (default 4)
 * - `PGDBPOOL_APP`: `application_name` (default `pgdbpool-deno-threaded`)
 *
 * Routes: `GET /query?n=1` answers `{ n, port, backend }` from `SELECT $1`; `GET /health`.
 *
 * @module
 */

import { AcquireTimeoutError, Pool } from "../mod.ts";
import type { EndpointConfig } from "../mod.ts";

function dbFromEnv(): string | EndpointConfig | EndpointConfig[] {
  const raw = Deno.env.get("PGDBPOOL_DB");
  if (!raw) throw new Error("set PGDBPOOL_DB to a postgres:// URL or a JSON endpoint list");
  return raw.trimStart().startsWith("postgres") ? raw : JSON.parse(raw);
}

const pool = new Pool({
  db: dbFromEnv(),
  groups: {
    default: {
      connection_count: Number(Deno.env.get("PGDBPOOL_CONNECTIONS") ?? 4),
      acquire_timeout_ms: 5000,
    },
  },
  application_name: Deno.env.get("PGDBPOOL_APP") ?? "pgdbpool-deno-threaded",
});

const server = Deno.serve({
  hostname: Deno.env.get("HOSTNAME") ?? "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 8000),
  onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/`),
}, async (request) => {
  const url = new URL(request.url);
  if (url.pathname === "/health") return new Response("ok");
  if (url.pathname !== "/query") return new Response("not found", { status: 404 });
  try {
    const n = Number(url.searchParams.get("n") ?? 1);
    const rows = await pool.query<{ n: number; port: number; backend: number }>(
      "default",
      "SELECT $1::int AS n, inet_server_port() AS port, pg_backend_pid() AS backend",
      [n],
    );
    return Response.json(rows[0]);
  } catch (err) {
    if (err instanceof AcquireTimeoutError) return new Response(err.message, { status: 503 });
    return Response.json({ error: (err as Error).message }, { status: 500 });
  }
});

let stopping = false;
async function shutdown(signal: Deno.Signal): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: shutting down`);
  await server.shutdown(); // stops listening, waits for requests in flight
  await pool.close();
  console.log("pool closed");
  Deno.exit(0);
}
Deno.addSignalListener("SIGINT", () => void shutdown("SIGINT"));
Deno.addSignalListener("SIGTERM", () => void shutdown("SIGTERM"));

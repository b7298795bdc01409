/**
 * `Bun.serve` with `reusePort`: start the same server in several processes on one port and the
 * kernel spreads connections over them. Each process has one threaded pool.
 *
 * ```sh
 * export PGDBPOOL_DB='postgres://app:secret@127.0.0.1:5432/app' PORT=8000
 * bun examples/bun_serve.ts & bun examples/bun_serve.ts &
 * ```
 *
 * On SIGINT or SIGTERM each process stops accepting requests, lets those in flight finish,
 * closes its pool and exits.
 *
 * Environment:
 * - `PGDBPOOL_DB`: a `postgres://` URL, or a JSON endpoint object or array (required)
 * - `PORT`: TCP port (default 8000); `HOSTNAME` (default 127.0.0.1)
 * - `PGDBPOOL_CONNECTIONS`: connections per process (default 4)
 * - `PGDBPOOL_APP`: `application_name` (default `pgdbpool-bun-serve`)
 *
 * Routes: `GET /query?n=1` answers `{ n, port, pid }` from `SELECT $1`; `GET /health`.
 *
 * @module
 */

import process from "node:process";
import { AcquireTimeoutError, Pool } from "../mod.ts";
import type { EndpointConfig } from "../mod.ts";

// The part of Bun's API used here, typed locally so the file also type-checks without bun-types.
interface BunServer {
  readonly port: number;
  stop(closeActiveConnections?: boolean): Promise<void>;
}
interface BunApi {
  serve(options: {
    hostname: string;
    port: number;
    reusePort: boolean;
    fetch(request: Request): Response | Promise<Response>;
  }): BunServer;
}
const Bun = (globalThis as unknown as { Bun: BunApi }).Bun;

function dbFromEnv(): string | EndpointConfig | EndpointConfig[] {
  const raw = process.env.PGDBPOOL_DB;
  if (!raw) throw new Error("set PGDBPOOL_DB to a postgres:// URL or a JSON endpoint list");
  return raw.trimStart().startsWith("postgres") ? raw : JSON.parse(raw);
}

const pool = new Pool({
  db: dbFromEnv(),
  groups: {
    default: {
      connection_count: Number(process.env.PGDBPOOL_CONNECTIONS ?? 4),
      acquire_timeout_ms: 5000,
    },
  },
  application_name: process.env.PGDBPOOL_APP ?? "pgdbpool-bun-serve",
});

const server = Bun.serve({
  hostname: process.env.HOSTNAME ?? "127.0.0.1",
  port: Number(process.env.PORT ?? 8000),
  reusePort: true,
  async fetch(request) {
    const url = new URL(request.url);
    if (url.pathname === "/health") return new Response("ok");
    if (url.pathname !== "/query") return new Response("not found", { status: 404 });
    try {
      const n = Number(url.searchParams.get("n") ?? 1);
      const rows = await pool.query<{ n: number; port: number }>(
        "default",
        "SELECT $1::int AS n, inet_server_port() AS port",
        [n],
      );
      return Response.json({ n: rows[0].n, port: rows[0].port, pid: process.pid });
    } catch (err) {
      if (err instanceof AcquireTimeoutError) return new Response(err.message, { status: 503 });
      return Response.json({ error: (err as Error).message }, { status: 500 });
    }
  },
});
console.log(`process ${process.pid} listening on http://127.0.0.1:${server.port}/`);

let stopping = false;
async function shutdown(signal: string): Promise<void> {
  if (stopping) return;
  stopping = true;
  console.log(`process ${process.pid}: ${signal}, shutting down`);
  await server.stop(); // stops listening, waits for requests in flight
  await pool.close();
  console.log(`process ${process.pid}: pool closed`);
  process.exit(0);
}
process.on("SIGINT", () => void shutdown("SIGINT"));
process.on("SIGTERM", () => void shutdown("SIGTERM"));

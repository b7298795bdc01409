/**
 * A Cloudflare Worker (workerd) on pgdbpool's edge entry: writes go to the primary, reads to a
 * replica.
 *
 * Workers forbid I/O on behalf of another request, so the pool lives for one request and is
 * closed with `ctx.waitUntil(pool.close())`. Background timers are off in the edge `Pool`.
 *
 * Bindings:
 * - `DB_ENDPOINTS` (text): JSON array of endpoints, primary first, e.g.
 *   `[{"host":"db1","port":5432,"name":"app","user":"app","pass":"..."}, {...replica...}]`
 * - `APP_NAME` (text, optional): the `application_name` of its connections.
 *
 * Routes:
 * - `GET /write?v=x` inserts `x` on the primary: `{ id, port }`
 * - `GET /read?v=x` reads `x` from the replica: `{ rows, port, app }`
 *
 * Build: `esbuild examples/worker.ts --bundle --conditions=workerd --platform=neutral
 * --format=esm --external:cloudflare:sockets --external:node:* --outfile=worker.js`, then run
 * it with the `nodejs_compat` compatibility flag (see tests/workerd_test.ts for a workerd config).
 *
 * The table: `CREATE TABLE worker_items (id serial PRIMARY KEY, v text NOT NULL)`.
 *
 * @module
 */

import { Pool } from "../edge.ts";
import type { EndpointConfig } from "../edge.ts";

/** The Worker's bindings. */
export interface Env {
  DB_ENDPOINTS: string;
  APP_NAME?: string;
}

/** The part of the Workers `ExecutionContext` this Worker uses. */
export interface Ctx {
  waitUntil(promise: Promise<unknown>): void;
}

function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json" },
  });
}

export default {
  async fetch(request: Request, env: Env, ctx: Ctx): Promise<Response> {
    const url = new URL(request.url);
    const endpoints = JSON.parse(env.DB_ENDPOINTS) as EndpointConfig[];
    // Endpoint 0 is the primary, endpoint 1 a replica. (Once role routing lands, groups can say
    // role: "primary" / "replica" instead of naming endpoints.)
    const pool = new Pool({
      db: endpoints,
      groups: {
        write: { connection_count: 1, endpoints: [0] },
        read: { connection_count: 1, endpoints: [endpoints.length > 1 ? 1 : 0] },
      },
      application_name: env.APP_NAME ?? "pgdbpool-worker",
    });
    try {
      const v = url.searchParams.get("v");
      if (url.pathname === "/write" && v !== null) {
        const rows = await pool.query<{ id: number; port: number }>(
          "write",
          "INSERT INTO worker_items (v) VALUES ($1) RETURNING id, inet_server_port() AS port",
          [v],
        );
        return json({ id: rows[0].id, port: rows[0].port });
      }
      if (url.pathname === "/read" && v !== null) {
        const rows = await pool.query<{ id: number; v: string; port: number }>(
          "read",
          "SELECT id, v, inet_server_port() AS port FROM worker_items WHERE v = $1 ORDER BY id",
          [v],
        );
        const [{ port, app }] = await pool.query<{ port: number; app: string }>(
          "read",
          "SELECT inet_server_port() AS port, current_setting('application_name') AS app",
        );
        return json({ rows: rows.map((r) => ({ id: r.id, v: r.v })), port, app });
      }
      return json({ error: "use GET /write?v=... or GET /read?v=..." }, 404);
    } catch (err) {
      // Error messages of this pool never carry the password.
      const e = err as { name?: string; message?: string; code?: string };
      return json({ error: e.message ?? String(err), name: e.name, code: e.code }, 500);
    } finally {
      ctx.waitUntil(pool.close());
    }
  },
};

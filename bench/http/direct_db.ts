/**
 * The direct variant of the HTTP apps' data access: the runtime's best driver called the way its
 * users call it, tagged templates on a client of 10 connections. postgres.js (Deno) and Bun's
 * `SQL` (Bun) share the tagged-template call shape and `reserve()`, so both apps use this one
 * piece of code; only the client's construction differs.
 *
 * @module
 */

import { type Db, updateParams, type World } from "./tfb.ts";
import { CONNECTIONS } from "./pool_db.ts";

/** A tagged template returning rows, as both postgres.js's `sql` and Bun's `SQL` are. */
// `any`: postgres.js types its tag as overloads (a helper call returns no promise) that no
// narrower shape shared with Bun's `SQL` accepts.
// deno-lint-ignore no-explicit-any
type Tag = (strings: TemplateStringsArray, ...values: any[]) => PromiseLike<any>;

/** What this module needs of a direct client. */
export interface TaggedClient extends Tag {
  reserve(): Promise<Tag & { release(): void }>;
}

/** Opens every connection of `sql` before the app reports ready. */
export async function warmDirect(sql: TaggedClient): Promise<void> {
  const reserved = await Promise.all(Array.from({ length: CONNECTIONS }, () => sql.reserve()));
  await Promise.all(reserved.map((r) => r`SELECT 1`));
  for (const r of reserved) r.release();
}

/** Data access through tagged templates on `sql`. */
export function directDb(sql: TaggedClient): Db {
  return {
    async world(id) {
      const rows: World[] = await sql`
        SELECT id, randomnumber AS "randomNumber" FROM world WHERE id = ${id}`;
      return rows[0];
    },
    async fortunes() {
      return await sql`SELECT id, message FROM fortune`;
    },
    async update(worlds) {
      const [ids, numbers] = updateParams(worlds);
      await sql`
        UPDATE world SET randomnumber = v.r
        FROM (SELECT unnest(${ids}::int[]) AS id, unnest(${numbers}::int[]) AS r) AS v
        WHERE world.id = v.id`;
    },
  };
}

/**
 * What the HTTP apps share: the TechEmpower-style schema and its seed, request parsing, HTML
 * escaping and the four test types, written against a small `Db` interface that each app
 * implements once per variant (pgdbpool, or the runtime's best direct driver). Only the data
 * access differs between the variants of an app; routing and rendering are this same code.
 *
 * The test types follow the TechEmpower Framework Benchmarks requirements:
 * - `/db`: one random `World` row (id 1..10000) as a JSON object `{ id, randomNumber }`.
 * - `/queries?n=N` (or `queries=N`): N rows, each by its own query (no `IN`), N clamped to
 *   1..500 and 1 when missing or not a number; a JSON array.
 * - `/updates?n=N`: N rows read one by one, each given a new random number, written back (a
 *   batched `UPDATE` is allowed); the updated rows as a JSON array.
 * - `/fortunes`: every `Fortune` row plus one added at request time, sorted by message,
 *   rendered as an HTML table with every message escaped (one of them is a `<script>`).
 *
 * Pure apart from `Math.random`: importing it starts nothing.
 *
 * @module
 */

/** A row of `World`. */
export interface World {
  id: number;
  randomNumber: number;
}

/** A row of `Fortune`. */
export interface Fortune {
  id: number;
  message: string;
}

/** The data access one variant of an app provides. */
export interface Db {
  world(id: number): Promise<World>;
  fortunes(): Promise<Fortune[]>;
  /** Writes `randomNumber` of every given row (one batched statement). */
  update(worlds: readonly World[]): Promise<void>;
}

export const WORLD_ROWS = 10000;

/** The statements every variant runs, with `$1`-style parameters (see `UPDATE_SQL`). */
export const WORLD_SQL = 'SELECT id, randomnumber AS "randomNumber" FROM world WHERE id = $1';
export const FORTUNE_SQL = "SELECT id, message FROM fortune";
/**
 * One statement for the whole batch, ids and numbers as two int arrays in text form (every
 * driver sends a text parameter the same way). Rows come sorted by id, so concurrent batches
 * lock rows in the same order and cannot deadlock.
 */
export const UPDATE_SQL = "UPDATE world SET randomnumber = v.r " +
  "FROM (SELECT unnest($1::int[]) AS id, unnest($2::int[]) AS r) AS v WHERE world.id = v.id";

/** The standard fortunes (TechEmpower's `Fortune` table), ids 1..12. */
export const FORTUNES: readonly string[] = [
  "fortune: No such file or directory",
  "A computer scientist is someone who fixes things that aren't broken.",
  "After enough decimal places, nobody gives a damn.",
  "A bad random number generator: 1, 1, 1, 1, 1, 4.33e+67, 1, 1, 1",
  "A computer program does what you tell it to do, not what you want it to do.",
  "Emacs is a nice operating system, but I prefer UNIX. — Tom Christaensen",
  "Any program that runs right is obsolete.",
  "A list is only as strong as its weakest link. — Donald Knuth",
  "Feature: A bug with seniority.",
  "Computers make very fast, very accurate mistakes.",
  '<script>alert("This should not be displayed in a browser alert box.");</script>',
  "フレームワークのベンチマーク",
];

export const EXTRA_FORTUNE = "Additional fortune added at request time.";

/** DDL and seed, for bench/http/run.ts to run once on the bench cluster's primary. */
export function schemaStatements(): string[] {
  const quote = (s: string) => `'${s.replaceAll("'", "''")}'`;
  return [
    "DROP TABLE IF EXISTS world, fortune",
    "CREATE TABLE world (id integer PRIMARY KEY, randomnumber integer NOT NULL DEFAULT 0)",
    "CREATE TABLE fortune (id integer PRIMARY KEY, message varchar(2048) NOT NULL)",
    `INSERT INTO world (id, randomnumber) SELECT i, 1 + floor(random() * ${WORLD_ROWS})::int ` +
    `FROM generate_series(1, ${WORLD_ROWS}) AS i`,
    `INSERT INTO fortune (id, message) VALUES ${
      FORTUNES.map((m, i) => `(${i + 1}, ${quote(m)})`).join(", ")
    }`,
    "ANALYZE world, fortune",
  ];
}

export function randomId(): number {
  return 1 + Math.floor(Math.random() * WORLD_ROWS);
}

/** The `queries` (or `n`) parameter as TechEmpower reads it: 1..500, 1 when not a number. */
export function queryCount(url: URL): number {
  const raw = url.searchParams.get("queries") ?? url.searchParams.get("n");
  const n = raw === null ? NaN : Number.parseInt(raw, 10);
  if (!Number.isFinite(n) || n < 1) return 1;
  return Math.min(n, 500);
}

const ESCAPES: Record<string, string> = {
  "&": "&amp;",
  "<": "&lt;",
  ">": "&gt;",
  '"': "&quot;",
  "'": "&#x27;",
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ESCAPES[c]);
}

/** Adds the request-time fortune, sorts by message and renders the page. */
export function renderFortunes(rows: readonly Fortune[]): string {
  const all = [...rows, { id: 0, message: EXTRA_FORTUNE }];
  // Code-unit order, as TechEmpower's reference implementations sort.
  all.sort((a, b) => (a.message < b.message ? -1 : a.message > b.message ? 1 : 0));
  let html = "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>" +
    "<tr><th>id</th><th>message</th></tr>";
  for (const f of all) html += `<tr><td>${f.id}</td><td>${escapeHtml(f.message)}</td></tr>`;
  return html + "</table></body></html>";
}

const JSON_HEADERS = { "content-type": "application/json" };
const HTML_HEADERS = { "content-type": "text/html; charset=utf-8" };

/** Ids sorted ascending, as `UPDATE_SQL` wants them, as an int array literal. */
function arrayLiteral(xs: readonly number[]): string {
  return `{${xs.join(",")}}`;
}

/** Both array parameters of `UPDATE_SQL` for these rows. */
export function updateParams(worlds: readonly World[]): [string, string] {
  const sorted = [...worlds].sort((a, b) => a.id - b.id);
  return [arrayLiteral(sorted.map((w) => w.id)), arrayLiteral(sorted.map((w) => w.randomNumber))];
}

/** Serves one request; a database error becomes a 500 (wrk counts it as a non-2xx). */
export async function route(db: Db, request: Request): Promise<Response> {
  const url = new URL(request.url);
  try {
    switch (url.pathname) {
      case "/db":
        return new Response(JSON.stringify(await db.world(randomId())), { headers: JSON_HEADERS });
      case "/queries": {
        const n = queryCount(url);
        const worlds = await Promise.all(Array.from({ length: n }, () => db.world(randomId())));
        return new Response(JSON.stringify(worlds), { headers: JSON_HEADERS });
      }
      case "/updates": {
        const n = queryCount(url);
        const worlds = await Promise.all(Array.from({ length: n }, () => db.world(randomId())));
        for (const w of worlds) {
          // A number that differs from the one read, so every row really changes.
          let next = randomId();
          while (next === w.randomNumber) next = randomId();
          w.randomNumber = next;
        }
        await db.update(worlds);
        return new Response(JSON.stringify(worlds), { headers: JSON_HEADERS });
      }
      case "/fortunes":
        return new Response(renderFortunes(await db.fortunes()), { headers: HTML_HEADERS });
      default:
        return new Response("not found", { status: 404 });
    }
  } catch (err) {
    console.error(`${url.pathname}: ${(err as Error)?.message ?? err}`);
    return new Response("database error", { status: 500 });
  }
}

/** How each variant of an app is written, for the report. */
export const VARIANTS: Readonly<Record<string, string>> = {
  pool: 'pgdbpool `pool.query("app", text, params)` for every statement (reads of /queries and ' +
    "/updates in parallel with `Promise.all`, so they pipeline), one group of " +
    "`connection_count: 10`, postgres.js driver",
  "pool-bun": 'the same on a pool built with `driver: "bun"`',
  direct: "the runtime's best direct driver with 10 connections and tagged templates " +
    "(`` sql`SELECT ... WHERE id = ${id}` ``), reads in parallel with `Promise.all`: " +
    "postgres.js `postgres({ max: 10 })` on Deno, Bun's `new SQL({ max: 10 })` on Bun",
};

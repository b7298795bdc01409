/**
 * Where a query builder's statements run: the shared part of the Drizzle and Kysely entries.
 * Outside a transaction a read goes to the read group and everything else to the write group,
 * each statement committed on its own (also in an `autocommit: false` group); a transaction is
 * one checkout of the write group. With read-your-writes on, the router keeps the token of the
 * newest write made through it and sends reads only where that write is visible.
 *
 * @module
 */

import { type Handler, Pool, type Rows, type ValueRows } from "../../mod.ts";
import { redactUrl } from "../redact.ts";
import { parseLsn } from "../lsn.ts";
import { quote } from "../quote.ts";
import { mayWrite } from "../token.ts";

/** The routing part of an integration's options, as the user gives it. */
export interface RouterOptions {
  /** Group for writes, transactions and everything that is not a plain read. */
  readonly group: string;
  /** Group for reads outside a transaction (default: `group`). */
  readonly read?: string;
  /** Reads wait for the newest write made through the same router (default false). */
  readonly read_your_writes?: boolean;
}

/** The keys of {@linkcode RouterOptions}. */
const ROUTING_KEYS: readonly string[] = ["group", "read", "read_your_writes"];

// A pool's groups never change: their names are read once per pool (so that making a database
// object per request stays cheap).
const groupNames = new WeakMap<Pool, readonly string[]>();

function groupsOf(pool: Pool): readonly string[] {
  let names = groupNames.get(pool);
  if (names === undefined) {
    names = Object.keys(pool.stats().groups);
    groupNames.set(pool, names);
  }
  return names;
}

/** One integration instance's routing and read-your-writes state. */
export class Router {
  readonly pool: Pool;
  readonly group: string;
  readonly read: string;
  readonly readYourWrites: boolean;
  #token: string | undefined;
  #tokenLsn = -1n;

  /**
   * Checks the options against `pool` (a `TypeError` names the bad value); `caller` prefixes
   * the messages, e.g. `drizzle()`. `otherKeys` are the integration's own options: any key
   * that is neither one of them nor a routing option is refused, so that a misspelt or
   * unsupported option (Drizzle's `cache`) fails here instead of being ignored.
   */
  constructor(pool: Pool, options: RouterOptions, caller: string, otherKeys: readonly string[]) {
    if (!(pool instanceof Pool)) {
      // Drizzle's own drivers take a connection URL here: it is named without its password.
      const given = typeof pool === "string" ? redactUrl(pool) : pool;
      throw new TypeError(`${caller} needs a Pool of @x/pgdbpool (got ${quote(given)})`);
    }
    if (typeof options !== "object" || options === null) {
      throw new TypeError(`${caller} needs options with a group (got ${quote(options)})`);
    }
    const known = [...ROUTING_KEYS, ...otherKeys];
    for (const key of Object.keys(options)) {
      if (!known.includes(key)) {
        throw new TypeError(
          `${caller}: option ${quote(key)} is not supported (known: ${known.join(", ")})`,
        );
      }
    }
    const configured = groupsOf(pool);
    const check = (key: string, name: unknown): string => {
      if (typeof name !== "string" || !configured.includes(name)) {
        throw new TypeError(
          `${caller}: ${key} ${quote(name)} is not a group of the pool (configured: ${
            configured.map((g) => JSON.stringify(g)).join(", ")
          })`,
        );
      }
      return name;
    };
    this.pool = pool;
    this.group = check("group", options.group);
    this.read = options.read === undefined ? this.group : check("read", options.read);
    const ryw = options.read_your_writes ?? false;
    if (typeof ryw !== "boolean") {
      throw new TypeError(`${caller}: read_your_writes must be a boolean (got ${quote(ryw)})`);
    }
    this.readYourWrites = ryw;
  }

  /** The token of the newest write made through this router (read-your-writes on only). */
  get token(): string | undefined {
    return this.#token;
  }

  /** Remembers the token of a write (a commit or an autocommit write) if it is the newest. */
  record(token: string | undefined): void {
    if (!this.readYourWrites || token === undefined) return;
    const lsn = parseLsn(token);
    if (lsn !== undefined && lsn > this.#tokenLsn) {
      this.#tokenLsn = lsn;
      this.#token = token;
    }
  }

  /**
   * A checkout for reads outside a transaction: the read group, in autocommit mode, and with
   * read-your-writes after the newest write.
   */
  readHandler(signal?: AbortSignal): Handler {
    return this.pool.handler(this.read, {
      autocommit: true,
      after: this.#token,
      signal,
    });
  }

  /** A checkout for writes outside a transaction: the write group, in autocommit mode. */
  writeHandler(signal?: AbortSignal): Handler {
    return this.pool.handler(this.group, { autocommit: true, signal });
  }

  /** A checkout for a transaction: the write group; the first statement opens it. */
  transactionHandler(signal?: AbortSignal): Handler {
    return this.pool.handler(this.group, { autocommit: false, signal });
  }

  /**
   * Runs one read outside a transaction on `group` (default: the read group). Without a token
   * to wait for, it is the pool's one-shot (which pipelines when the group is busy). The token
   * applies to the read group only: another group (Drizzle's `$primary`) is read as it is.
   */
  async runRead(
    text: string,
    params: readonly unknown[],
    arrays: boolean,
    group: string = this.read,
  ): Promise<Rows | ValueRows> {
    // A read that writes (a SELECT over a data-modifying CTE, `db.with(insert).select()`) is a
    // write: the read group may be replicas, and its token must be recorded.
    if (mayWrite(text)) return await this.runWrite(text, params, arrays);
    const rowMode = arrays ? "array" : "object";
    if (this.#token === undefined || group !== this.read) {
      return await this.pool.query(group, text, params, { rowMode });
    }
    await using db = this.readHandler();
    return await db.query(text, params, { rowMode });
  }

  /**
   * Runs one statement outside a transaction on the write group, committed on its own (in
   * autocommit mode, also when the group is `autocommit: false`: one statement is atomic
   * anyway, and this saves the BEGIN and COMMIT), and records its token.
   */
  async runWrite(
    text: string,
    params: readonly unknown[],
    arrays: boolean,
  ): Promise<Rows | ValueRows> {
    await using db = this.writeHandler();
    const rows = await db.query(text, params, { rowMode: arrays ? "array" : "object" });
    this.record(db.token);
    return rows;
  }
}

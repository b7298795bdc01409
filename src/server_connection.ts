/**
 * One pooled server connection: a single-connection postgres.js client plus what the pool must
 * know to never run a statement on the wrong session (close epoch, transaction state).
 *
 * @module
 */

import type postgres from "postgres";
import type { Endpoint } from "./endpoint.ts";
import { isConnectionError } from "./sqlstate.ts";

const noop = () => {};

/** Where an idle connection waits: one list per endpoint of a group. */
export interface Member {
  readonly endpoint: Endpoint;
  readonly idle: ServerConnection[];
  open: number;
  /** Routing currently allows this endpoint for the group. */
  active: boolean;
}

/**
 * A postgres.js `max: 1` client reconnects silently: after its server connection dies, the next
 * statement runs on a brand-new session. `epoch` counts closes so a transaction can notice that
 * its session is gone; `broken` makes the pool discard the client instead of reusing it, because
 * statements sent between a socket error and its close event never settle.
 */
export class ServerConnection {
  readonly member: Member;
  readonly sql: postgres.Sql;
  /** Bumped whenever the underlying server connection closes. */
  epoch = 0;
  /** Set on any connection-level error: never send on this client again. */
  broken = false;
  /** A transaction is open on this session. */
  txOpen = false;
  /** `epoch` when the open transaction began. */
  txEpoch = 0;
  /** The server said "there is no transaction in progress" (25P01) since the last reset. */
  sawNoTransaction = false;
  /** `performance.now()` after the last statement finished; 0 before the first. */
  lastUsed = 0;
  /**
   * One-shot statements (`pool.query` in an autocommit group) holding this connection at once;
   * 0 for an ordinary exclusive checkout. Only the last of them checks it in.
   */
  users = 0;
  /** `performance.now()` after which this connection is retired at check-in. */
  readonly retireAt: number;

  constructor(
    member: Member,
    retireAt: number,
    onParameter: (conn: ServerConnection, key: string, value: string) => void,
  ) {
    this.member = member;
    this.retireAt = retireAt;
    this.sql = member.endpoint.client({
      onclose: () => {
        this.epoch++;
        this.broken = true;
      },
      onnotice: (notice) => {
        if (notice.code === "25P01") this.sawNoTransaction = true;
      },
      onparameter: (key, value) => onParameter(this, key, value),
    });
  }

  /** The endpoint this connection talks to. */
  get endpoint(): Endpoint {
    return this.member.endpoint;
  }

  /** Sends `BEGIN` without waiting: it is pipelined ahead of the next statement. */
  begin(): Promise<unknown> {
    const begin = this.sql.unsafe("BEGIN");
    begin.catch(noop);
    this.txOpen = true;
    this.txEpoch = this.epoch;
    this.sawNoTransaction = false;
    return begin;
  }

  /**
   * Ends the open transaction with ROLLBACK. When the session is gone the server has rolled back
   * already; a connection error marks the client broken. Other errors are thrown.
   */
  async rollback(): Promise<void> {
    this.txOpen = false;
    if (this.broken || this.epoch !== this.txEpoch) return;
    try {
      await this.sql.unsafe("ROLLBACK");
      this.lastUsed = performance.now();
    } catch (err) {
      if (!isConnectionError(err)) throw err;
      this.broken = true;
    }
  }

  /** True when the open transaction's session has closed since `BEGIN`. */
  get txLost(): boolean {
    return this.txOpen && (this.broken || this.epoch !== this.txEpoch);
  }

  /** A cheap round trip proving the session is alive; rejects after `timeoutMs`. */
  async ping(timeoutMs: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const query = this.sql.unsafe("SELECT 1");
    try {
      await Promise.race([
        query,
        new Promise((_, reject) => {
          timer = setTimeout(
            () => reject(Object.assign(new Error("Ping timed out"), { code: "ETIMEDOUT" })),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Ends the client; statements in flight get `timeoutS` seconds before the socket is cut. */
  end(timeoutS: number): Promise<void> {
    this.broken = true;
    return this.sql.end({ timeout: timeoutS }).catch(noop);
  }
}

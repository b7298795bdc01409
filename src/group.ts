/**
 * A named group of connections: its capacity (a semaphore of `connection_count` permits), the
 * idle connections per endpoint, and the rotation that spreads checkouts over endpoints.
 *
 * @module
 */

import type { ResolvedGroup } from "./config.ts";
import type { Endpoint } from "./endpoint.ts";
import { AcquireTimeoutError, PoolClosedError, PoolExhaustedError } from "./errors.ts";
import { Semaphore } from "./semaphore.ts";
import { type Member, ServerConnection } from "./server_connection.ts";

/** Symbol under which a pool exposes its groups to handlers (not part of the public API). */
export const groupLookup: unique symbol = Symbol("pgdbpool.groupLookup");

/** Anything handlers can take a group from: a pool. */
export interface GroupSource {
  /** Returns the named group or throws `UnconfiguredGroupError` / `PoolClosedError`. */
  [groupLookup](name: string): Group;
}

/** Settings a group takes from the pool as a whole. */
export interface GroupContext {
  readonly threaded: boolean;
  readonly validateAfterMs: number;
  readonly closeTimeoutS: number;
  onParameter(conn: ServerConnection, key: string, value: string): void;
}

/** Running totals of one group, for `pool.stats()`. */
export interface GroupCounters {
  checkouts: number;
  timeouts: number;
  waits: number;
}

/** The connections of one configured group. */
export class Group {
  readonly name: string;
  readonly settings: ResolvedGroup;
  readonly context: GroupContext;
  readonly counters: GroupCounters = { checkouts: 0, timeouts: 0, waits: 0 };
  closed = false;
  readonly #sem: Semaphore;
  readonly #all: Member[];
  #members: Member[];
  #share: number;
  #cursor = 0;
  readonly #conns = new Set<ServerConnection>();

  constructor(settings: ResolvedGroup, endpoints: readonly Endpoint[], context: GroupContext) {
    this.name = settings.name;
    this.settings = settings;
    this.context = context;
    this.#sem = new Semaphore(settings.size);
    this.#all = settings.endpoints.map((i) => ({ endpoint: endpoints[i], idle: [], open: 0 }));
    this.#members = this.#all;
    this.#share = Math.ceil(settings.size / this.#members.length);
  }

  /** Whether statements commit by themselves. */
  get autocommit(): boolean {
    return this.settings.autocommit;
  }

  /** Connections checked out right now. */
  get busy(): number {
    return this.settings.size - this.#sem.available;
  }

  /** Checkouts waiting for a connection. */
  get waiting(): number {
    return this.#sem.waiting;
  }

  /** Server connections open (idle or busy). */
  get open(): number {
    return this.#conns.size;
  }

  /** Idle connections ready for a checkout. */
  get idle(): number {
    let n = 0;
    for (const m of this.#all) n += m.idle.length;
    return n;
  }

  /**
   * The synchronous fast path: a connection if a permit is free, else `null` (threaded mode:
   * the caller waits) or `PoolExhaustedError` (non-threaded mode: waiting could never end).
   */
  tryCheckout(): ServerConnection | null {
    if (!this.#sem.tryAcquire()) {
      if (this.context.threaded) return null;
      throw new PoolExhaustedError(this.name, this.settings.size);
    }
    this.counters.checkouts++;
    return this.#take();
  }

  /** The slow path: waits in FIFO order for a permit, up to `timeoutMs`. */
  async waitCheckout(signal?: AbortSignal, timeoutMs?: number): Promise<ServerConnection> {
    if (this.closed) throw new PoolClosedError();
    const limit = timeoutMs ?? this.settings.acquireTimeoutMs;
    this.counters.waits++;
    try {
      await this.#sem.wait(signal, limit);
    } catch (err) {
      if (
        err instanceof DOMException && err.name === "TimeoutError" && !signal?.aborted
      ) {
        this.counters.timeouts++;
        throw new AcquireTimeoutError(this.name, limit);
      }
      throw err;
    }
    if (this.closed) {
      this.#sem.release();
      throw new PoolClosedError();
    }
    this.counters.checkouts++;
    return this.#take();
  }

  /**
   * Picks a connection for a permit just taken. Starts at the rotation cursor so sequential
   * checkouts alternate endpoints; a member below its fair share opens a new connection rather
   * than letting another endpoint's idle one win, which keeps the spread even.
   */
  #take(): ServerConnection {
    const members = this.#members;
    const n = members.length;
    let i = this.#cursor;
    for (let k = 0; k < n; k++) {
      const member = members[i];
      if (++i === n) i = 0;
      const conn = member.idle.pop();
      if (conn !== undefined) {
        this.#cursor = i;
        return conn;
      }
      if (member.open < this.#share) {
        this.#cursor = i;
        return this.#open(member);
      }
    }
    // Every member is at its share yet a permit was free (connections are still being rolled
    // back or retired): open one more on the least loaded member.
    let least = members[0];
    for (const member of members) if (member.open < least.open) least = member;
    return this.#open(least);
  }

  #open(member: Member): ServerConnection {
    const lifetime = this.settings.maxLifetimeMs;
    // Jitter fixed per connection so connections opened together do not retire together.
    const retireAt = lifetime === undefined
      ? Infinity
      : performance.now() + lifetime * (0.85 + Math.random() * 0.15);
    const conn = new ServerConnection(member, retireAt, this.context.onParameter);
    member.open++;
    this.#conns.add(conn);
    return conn;
  }

  #discard(conn: ServerConnection): void {
    if (!this.#conns.delete(conn)) return;
    conn.member.open--;
    conn.end(0);
  }

  /**
   * Swaps a broken connection of a checkout for another one under the same permit: the caller
   * never sees the dead session.
   */
  replace(conn: ServerConnection): ServerConnection {
    this.#discard(conn);
    return this.#take();
  }

  /**
   * Returns a connection and its permit. An open transaction is rolled back first: the next
   * user must never inherit a session inside someone else's transaction.
   */
  checkin(conn: ServerConnection): Promise<void> | undefined {
    if (conn.txOpen) return this.#rollbackThenCheckin(conn);
    if (
      this.closed || conn.broken ||
      (conn.retireAt !== Infinity && performance.now() > conn.retireAt)
    ) {
      this.#discard(conn);
    } else {
      conn.member.idle.push(conn);
    }
    this.#sem.release();
  }

  async #rollbackThenCheckin(conn: ServerConnection): Promise<void> {
    conn.txOpen = false;
    if (!conn.broken && conn.epoch === conn.txEpoch) {
      try {
        await conn.sql.unsafe("ROLLBACK");
      } catch {
        // The server rolls back by itself when the session ends.
        conn.broken = true;
      }
    }
    this.checkin(conn);
  }

  /** Fails waiters and ends every connection, idle or busy. */
  async close(timeoutS: number): Promise<void> {
    this.closed = true;
    this.#sem.rejectAll(new PoolClosedError());
    const ends = [...this.#conns].map((conn) => conn.end(timeoutS));
    for (const member of this.#all) member.idle.length = 0;
    await Promise.all(ends);
  }
}

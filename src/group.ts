/**
 * A named group of connections: its capacity (a semaphore of `connection_count` permits), the
 * idle connections per endpoint, and the rotation that spreads checkouts over the endpoints its
 * role allows right now.
 *
 * @module
 */

import type { ResolvedGroup } from "./config.ts";
import type { PoolHooks } from "./hooks.ts";
import type { Endpoint } from "./endpoint.ts";
import {
  AcquireTimeoutError,
  NoEndpointAvailableError,
  PoolClosedError,
  PoolExhaustedError,
} from "./errors.ts";
import { poolEvent, reasonOf } from "./events.ts";
import { isCapacityError } from "./sqlstate.ts";
import { route } from "./routing.ts";
import { SeatQueue } from "./seat_queue.ts";
import { Semaphore } from "./semaphore.ts";
import { withDeadline } from "./deadline.ts";
import { type Member, ServerConnection } from "./server_connection.ts";
import { CLEAN, RESET_SESSION, RESETTABLE, type Residue, UNRESETTABLE } from "./session_state.ts";
import type { StatementOptions } from "./driver/postgres.ts";
import type { Topology } from "./topology.ts";
import { WaitSamples } from "./wait_samples.ts";

/** Symbol under which a pool exposes its groups to handlers (not part of the public API). */
export const groupLookup: unique symbol = Symbol("pgdbpool.groupLookup");

/** Anything handlers can take a group from: a pool. */
export interface GroupSource {
  /** Returns the named group or throws `UnconfiguredGroupError` / `PoolClosedError`. */
  [groupLookup](name: string): Group;
}

/** Settings and services a group takes from the pool as a whole. */
export interface GroupContext {
  readonly threaded: boolean;
  readonly validateAfterMs: number;
  /**
   * Set when background upkeep is off (`health_check_interval_ms: 0`): called at check-in so
   * that idle and old connections of every group still retire (throttled by the pool).
   */
  readonly lazyUpkeep: (() => void) | undefined;
  /**
   * Set when background probing is off: called before a statement is sent, so that a server
   * that goes silent under a statement is still probed (and its connections cut) in time.
   */
  readonly watch: ((endpoint: Endpoint) => void) | undefined;
  readonly topology: Topology;
  readonly events: EventTarget;
  onParameter(conn: ServerConnection, key: string, value: string): void;
  onToken(token: string): void;
  /** The installed observer, if any (`@x/pgdbpool/otel`); read at every use. */
  hooks: PoolHooks | undefined;
}

/** Running totals of one group, for `pool.stats()`. */
export interface GroupCounters {
  checkouts: number;
  timeouts: number;
}

/** Statements pipelined on one connection at most, below postgres.js's `max_pipeline`. */
const MAX_PIPELINE = 64;

/**
 * With one-shots waiting, a shared connection takes more only once its pipeline has drained to
 * this, and then fills it up again in one go: a batch of statements per socket write, as
 * postgres.js refills a connection, instead of a hand-off per freed seat: with 64 callers of 20
 * parallel statements each, seat by seat cost the pool about 15% more CPU per request than
 * postgres.js, in half-pipeline batches it costs the same.
 */
const REFILL_AT = MAX_PIPELINE / 2;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The `started` of a permit the seat queue takes for its waiters: no checkout of its own (it
 * may find nobody left to seat); each seated one-shot is one, and the seat queue records its
 * wait.
 */
const FOR_SEATS = -1;

/** Withdraws the seat queue's permit wait once nobody is left in the queue. */
const SEATS_GONE = Symbol("seats gone");

/** The connections of one configured group. */
export class Group {
  readonly name: string;
  readonly settings: ResolvedGroup;
  readonly context: GroupContext;
  readonly counters: GroupCounters = { checkouts: 0, timeouts: 0 };
  readonly waitSamples: WaitSamples = new WaitSamples();
  /** `close()` began: no new checkout, no new connection. Held checkouts may still finish. */
  closing = false;
  /** `close()` finished: every connection is ended; every statement fails. */
  ended = false;
  readonly #sem: Semaphore;
  #drained: (() => void) | undefined;
  /** The group retires connections (a lifetime or an idle timeout is set). */
  readonly #expires: boolean;
  readonly #all: Member[];
  #members: Member[];
  #share: number;
  #cursor = 0;
  readonly #conns = new Set<ServerConnection>();
  /** Connections held by one-shot statements only: further one-shots may pipeline onto them. */
  readonly #shared: ServerConnection[] = [];
  /** Connections opened in the background and not proven alive yet (they hold no permit). */
  readonly #warming = new Set<ServerConnection>();
  /** Checked in with a transaction open, waiting for their ROLLBACK (their permits still out). */
  readonly #rollingBack = new Set<ServerConnection>();
  /** Checkouts that found nothing routable, woken as soon as something is. */
  readonly #awaitingRoute: (() => void)[] = [];
  /** One-shots waiting for a seat on a shared connection (every permit and seat was taken). */
  readonly #seats: SeatQueue<ServerConnection>;
  /** A permit is being sought for the seat queue (one at a time). */
  #seekingSeats = false;
  /** Withdraws that permit wait while it sits in the semaphore's queue. */
  #seatPermitCancel: ((reason: unknown) => void) | undefined;
  /** Whether that permit wait still sits in the semaphore's queue. */
  #seatPermitQueued: (() => boolean) | undefined;

  constructor(settings: ResolvedGroup, endpoints: readonly Endpoint[], context: GroupContext) {
    this.name = settings.name;
    this.settings = settings;
    this.context = context;
    this.#sem = new Semaphore(settings.size);
    this.#seats = new SeatQueue(
      settings.acquireTimeoutMs,
      () => this.timedOut(settings.acquireTimeoutMs),
      () => this.#seatPermitCancel?.(SEATS_GONE),
      // Each one-shot that waited for a seat is a checkout that waited: its own wait counts,
      // in stats() and for the hooks (the permit the queue seeks for it records none).
      (waitedMs) => {
        this.counters.checkouts++;
        this.waitSamples.add(waitedMs);
        this.context.hooks?.checkout(this.name, waitedMs);
      },
    );
    this.#expires = settings.maxLifetimeMs !== undefined || settings.idleTimeoutMs !== undefined;
    this.#all = settings.endpoints.map((i) => ({
      endpoint: endpoints[i],
      idle: [],
      open: 0,
      active: false,
      lagging: false,
    }));
    this.#members = [];
    this.#share = settings.size;
    this.reroute();
    context.topology.onChange(() => this.reroute());
    context.topology.onTick((now) => this.maintain(now));
  }

  /** Whether statements commit by themselves. */
  get autocommit(): boolean {
    return this.settings.autocommit;
  }

  /** Connections checked out right now. */
  get busy(): number {
    return this.settings.size - this.#sem.available;
  }

  /** Checkouts waiting for a connection, and one-shots waiting for a seat on one. */
  get waiting(): number {
    return this.#exclusiveWaiting + this.#seats.length;
  }

  /** Checkouts waiting in the semaphore's queue for a connection of their own. */
  get #exclusiveWaiting(): number {
    // Asked of the semaphore, not of #seatPermitCancel: that is forgotten only once the
    // settled wait's callbacks run, a microtask after the semaphore stopped counting it.
    return this.#sem.waiting - (this.#seatPermitQueued?.() ? 1 : 0);
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

  /** Whether a live connection of this group to `endpoint` is held or shared right now. */
  busyOn(endpoint: Endpoint): boolean {
    for (const conn of this.#conns) {
      if (
        conn.member.endpoint === endpoint && !conn.dead &&
        (conn.state === "held" || conn.state === "shared")
      ) return true;
    }
    return false;
  }

  /** Open connections to `endpoint`. */
  openOn(endpoint: Endpoint): number {
    let n = 0;
    for (const m of this.#all) if (m.endpoint === endpoint) n += m.open;
    return n;
  }

  /**
   * Applies the topology's current facts: members that left (down, demoted, lagging) stop
   * receiving checkouts; their idle connections close now, busy ones at check-in, and ones still
   * starting up are cut (nothing ran on them: their statements move). A server that went down
   * also loses its busy connections at once, so statements stuck on a hung host fail instead of
   * hanging. When the members change, connections move towards each member's fair share.
   */
  reroute(): void {
    const topology = this.context.topology;
    const allowed = route(
      this.settings,
      this.#all.map((m) => m.endpoint),
      topology.primary(),
      (e) => topology.onPrimaryTimeline(e),
    );
    const members = this.#all.filter((m) => allowed.includes(m.endpoint));
    for (const member of this.#all) {
      const active = members.includes(member);
      member.active = active;
      if (!active) {
        for (const conn of member.idle.splice(0)) this.#discard(conn);
        for (const conn of this.#conns) {
          if (conn.member === member && !conn.session.established) conn.end(0);
        }
      }
      if (member.endpoint.state === "down") {
        for (const conn of this.#conns) if (conn.member === member) conn.end(0);
      }
      this.#noteLag(member);
    }
    if (
      members.length !== this.#members.length || members.some((m, i) => m !== this.#members[i])
    ) {
      this.#members = members;
      this.#share = Math.ceil(this.settings.size / Math.max(1, members.length));
      this.#cursor = 0;
      this.#rebalance();
    }
    if (members.length > 0) { for (const wake of this.#awaitingRoute.splice(0)) wake(); }
  }

  /** Tells listeners when lag moves a replica out of this group's routing, and back in. */
  #noteLag(member: Member): void {
    const e = member.endpoint;
    const limit = this.settings.maxReplicaLagMs;
    // A lagging replica that goes down meanwhile is still the one that left for lag: told
    // once more only when it is back in routing (replicacaughtup), never lagging a second time.
    const lagging = member.lagging
      ? !member.active && e.role === "replica"
      : !member.active && limit !== undefined && this.settings.role !== "primary" &&
        e.state === "up" && e.role === "replica" && e.lagKnown && e.lagMs > limit;
    if (lagging === member.lagging) return;
    member.lagging = lagging;
    // Leaving the group as a replica for another reason (promoted) is not catching up, nor is
    // coming back as a primary (a lagging replica promoted, which an any or prefer-replica
    // group takes).
    if (!lagging && (!member.active || e.role !== "replica")) return;
    this.context.events.dispatchEvent(
      poolEvent(lagging ? "replicalagging" : "replicacaughtup", {
        group: this.name,
        endpoint: e.info,
        lag_ms: Math.round(e.lagMs),
      }),
    );
  }

  /**
   * Moves idle connections from members above their fair share to members below it, keeping
   * the group's total: a server that returns gets its part of the load back within a check-in
   * or two instead of staying idle while the survivors keep every connection. Busy surplus
   * moves when it is checked in (`#return`).
   */
  #rebalance(): void {
    if (this.closing) return;
    let moved = 0;
    for (const member of this.#members) {
      while (member.open > this.#share && member.idle.length > 0) {
        this.#discard(member.idle.shift()!);
        moved++;
      }
    }
    for (let under = this.#underShare(); moved > 0 && under !== undefined; moved--) {
      this.#warm(under);
      under = this.#underShare();
    }
  }

  /** A member with fewer connections than its fair share, if any. */
  #underShare(): Member | undefined {
    for (const member of this.#members) if (member.open < this.#share) return member;
    return undefined;
  }

  /** Whether some endpoint can serve this group right now. */
  get routable(): boolean {
    return this.#members.length > 0;
  }

  /**
   * Resolves once some endpoint can serve this group (at once when one can), waiting as a new
   * checkout does; `NoEndpointAvailableError` once every probe has answered with still none.
   */
  whenRoutable(): Promise<void> {
    return this.#members.length > 0 ? Promise.resolve() : this.#findEndpoint();
  }

  /** This group would use a primary now and has nothing routable (probing runs faster). */
  get wantsPrimary(): boolean {
    return this.#members.length === 0 &&
      (this.settings.role === "primary" || this.settings.role === "prefer-replica");
  }

  /**
   * The synchronous fast path: a connection if a permit is free, else `null` (threaded mode:
   * the caller waits) or `PoolExhaustedError` (non-threaded mode: waiting could never end).
   * With no routable endpoint it returns `null` too: the slow path probes and decides.
   */
  tryCheckout(again = false): ServerConnection | null {
    if (this.#members.length === 0 || this.closing) return null;
    if (!this.#sem.tryAcquire()) {
      if (this.context.threaded || this.#cleaningFree()) return null;
      throw new PoolExhaustedError(this.name, this.settings.size);
    }
    const conn = this.#take();
    // `again`: a one-shot moving to another connection, one request counted once (a new hold).
    if (again) {
      if (this.context.hooks !== undefined) conn.heldSince = performance.now();
      return conn;
    }
    this.counters.checkouts++;
    if (this.context.hooks !== undefined) this.#observeCheckout(conn, 0);
    return conn;
  }

  /**
   * Non-threaded mode: a permit is held only by a check-in still cleaning its connection (the
   * ROLLBACK or reset, one round trip bounded by `connect_timeout`) that no waiter has claimed.
   * Waiting for it cannot deadlock: the checkout waits instead of failing with
   * `PoolExhaustedError` (a sequential program that released with `using` and checked out again
   * at once used to fail, with nobody else holding the connection).
   */
  #cleaningFree(): boolean {
    return this.#sem.waiting < this.#rollingBack.size;
  }

  #observeCheckout(conn: ServerConnection, waitMs: number): void {
    conn.heldSince = performance.now();
    this.context.hooks?.checkout(this.name, waitMs);
  }

  /**
   * A one-shot autocommit statement when every connection is busy: rather than wait, it is
   * pipelined onto the least loaded connection that only one-shots hold, as postgres.js itself
   * does. Never while someone waits in the FIFO queue, so waiters cannot be starved.
   */
  tryShare(again = false): ServerConnection | null {
    if (this.#sem.waiting > 0 || this.#seats.length > 0) return null;
    let best: ServerConnection | null = null;
    let now = 0;
    for (const conn of this.#shared) {
      // Routing holds here too: never join a connection to a server the group left.
      if (
        !conn.dead && conn.member.active && conn.users < MAX_PIPELINE &&
        (best === null || conn.users < best.users)
      ) {
        // Nor one past its lifetime: under steady load it would never drain and retire. The
        // clock is read only when a lifetime is set.
        if (conn.retireAt !== Infinity && (now ||= performance.now()) > conn.retireAt) continue;
        best = conn;
      }
    }
    if (best !== null && !again) {
      // A request served at once: it waited for nothing (use time is per hold).
      this.counters.checkouts++;
      this.context.hooks?.checkout(this.name, 0);
    }
    if (best !== null) best.users++;
    return best;
  }

  /**
   * A one-shot that found no free permit and no free seat waits for a seat, oldest first, up to
   * `acquire_timeout_ms`. Seats come from two places: once a shared connection's pipeline has
   * drained to half, it is filled up again from the oldest waiters in one go (unless a checkout
   * waits for a whole connection: sharing on would never let one drain), and the queue seeks one
   * permit at a time in the semaphore's FIFO,
   * whose connection then seats as many waiters as it can pipeline. So under overload one-shots
   * keep every connection's pipeline full instead of queueing one statement per connection.
   */
  waitShare(again = false): Promise<ServerConnection> {
    if (this.closing) return Promise.reject(new PoolClosedError());
    const seat = this.#seats.wait(again);
    if (!this.#seekingSeats) this.#seekSeats();
    return seat;
  }

  async #seekSeats(): Promise<void> {
    this.#seekingSeats = true;
    try {
      while (this.#seats.length > 0) {
        let conn: ServerConnection;
        try {
          conn = await this.#permitForSeats();
        } catch (err) {
          // Nothing routable, or closing: every waiter would hear the same.
          if (err !== SEATS_GONE) this.#seats.rejectAll(err);
          continue;
        }
        if (this.#seats.length === 0) {
          this.#return(conn);
          break;
        }
        // A checkout for the oldest waiter (the seat queue counts it and records its wait).
        const now = performance.now();
        if (this.context.hooks !== undefined) conn.heldSince = now;
        this.share(conn);
        this.#seats.give(conn, now);
        while (conn.users < MAX_PIPELINE && this.#seats.length > 0) {
          conn.users++;
          this.#seats.give(conn, now);
        }
      }
    } finally {
      this.#seekingSeats = false;
    }
  }

  async #permitForSeats(): Promise<ServerConnection> {
    if (!this.#sem.tryAcquire()) {
      if (!this.context.threaded) throw new PoolExhaustedError(this.name, this.settings.size);
      try {
        await this.#sem.wait(undefined, undefined, (cancel, queued) => {
          this.#seatPermitCancel = cancel;
          this.#seatPermitQueued = queued;
        });
      } finally {
        this.#seatPermitCancel = undefined;
        this.#seatPermitQueued = undefined;
      }
    }
    return this.#afterPermit(undefined, undefined, FOR_SEATS);
  }

  // Seats the oldest waiters on a shared connection until its pipeline is full; false when it
  // may take none.
  #refill(conn: ServerConnection): boolean {
    const now = performance.now();
    if (!this.#reseat(conn, now)) return false;
    while (conn.users < MAX_PIPELINE && this.#seats.length > 0 && this.#reseat(conn, now));
    return true;
  }

  /**
   * One seat on shared connection `conn` for the oldest one-shot waiting, unless a checkout
   * waits for a whole connection or `conn` should not take more statements.
   */
  #reseat(conn: ServerConnection, now: number): boolean {
    if (
      conn.dead || !conn.member.active || this.closing || this.#exclusiveWaiting > 0 ||
      now > conn.retireAt || conn.residue !== CLEAN
    ) {
      return false;
    }
    conn.users++;
    return this.#seats.give(conn, now);
  }

  /** A checkout of this group waited `limitMs` in vain: counted, told, and the error to throw. */
  timedOut(limitMs: number): AcquireTimeoutError {
    this.counters.timeouts++;
    this.context.events.dispatchEvent(poolEvent("acquiretimeout", { group: this.name }));
    return new AcquireTimeoutError(this.name, limitMs);
  }

  /** Marks a connection just checked out by a one-shot statement as open to pipelining. */
  share(conn: ServerConnection): void {
    conn.state = "shared";
    conn.users = 1;
    this.#shared.push(conn);
  }

  /**
   * The slow path: waits in FIFO order for a permit (threaded mode), up to `timeoutMs`, then
   * makes sure an endpoint can serve the group. `after` (a read-your-writes LSN) restricts the
   * choice to replicas that have replayed it, waiting a bounded time before using the primary.
   */
  waitCheckout(
    signal?: AbortSignal,
    timeoutMs?: number,
    after?: bigint,
    onQueued?: (cancel: (reason: unknown) => void) => void,
  ): Promise<ServerConnection> {
    // A promise chain, not an async function: a contended checkout is handed on in as few
    // microtask hops as pg-pool's (each async frame between the freed permit and the waiter
    // cost two).
    if (this.closing) return Promise.reject(new PoolClosedError());
    const started = performance.now();
    const limit = timeoutMs ?? this.settings.acquireTimeoutMs;
    if (this.#sem.tryAcquire()) {
      try {
        return Promise.resolve(this.#afterPermit(after, signal, started, limit, onQueued));
      } catch (err) {
        return Promise.reject(err);
      }
    }
    if (!this.context.threaded && !this.#cleaningFree()) {
      return Promise.reject(new PoolExhaustedError(this.name, this.settings.size));
    }
    return this.#sem.wait(signal, limit, onQueued).then(() => {
      this.waitSamples.add(performance.now() - started);
      return this.#afterPermit(after, signal, started, limit, onQueued);
    }, (err: unknown) => {
      if (err instanceof DOMException && err.name === "TimeoutError" && !signal?.aborted) {
        throw this.timedOut(limit);
      }
      throw err;
    });
  }

  /**
   * With a permit taken: a connection for it, or the permit back and the reason why not. The
   * common case (a routable member, no read-your-writes token) answers at once.
   */
  #afterPermit(
    after: bigint | undefined,
    signal: AbortSignal | undefined,
    started: number,
    limitMs?: number,
    onQueued?: (cancel: (reason: unknown) => void) => void,
  ): ServerConnection | Promise<ServerConnection> {
    if (this.closing || this.#members.length === 0 || after !== undefined) {
      return this.#afterPermitSlow(after, signal, started, limitMs, onQueued);
    }
    try {
      return this.#checkedOut(this.#take(), started);
    } catch (err) {
      this.#releasePermit();
      throw err;
    }
  }

  async #afterPermitSlow(
    after: bigint | undefined,
    signal: AbortSignal | undefined,
    started: number,
    limitMs: number | undefined,
    onQueued?: (cancel: (reason: unknown) => void) => void,
  ): Promise<ServerConnection> {
    // The wait for routing or a replica's replay holds a permit: the checkout's owner may
    // cancel it (a handler released meanwhile), as it could while queued for the permit, so
    // that the permit comes back at once rather than at the end of the wait.
    const outer = signal;
    let forward: (() => void) | undefined;
    if (onQueued !== undefined) {
      const own = new AbortController();
      if (outer !== undefined) {
        forward = () => own.abort(outer.reason);
        if (outer.aborted) forward();
        else outer.addEventListener("abort", forward, { once: true });
      }
      onQueued((reason) => own.abort(reason));
      signal = own.signal;
    }
    try {
      if (this.closing) throw new PoolClosedError();
      if (this.#members.length === 0) await this.#findEndpoint(signal, started, limitMs);
      const conn = after === undefined
        ? this.#take()
        : await this.#takeAfter(after, signal, started, limitMs);
      return this.#checkedOut(conn, started);
    } catch (err) {
      this.#releasePermit();
      throw err;
    } finally {
      if (forward !== undefined) outer!.removeEventListener("abort", forward);
    }
  }

  /**
   * Gives a permit back: every path that releases one comes here, so that `close()` hears when
   * the last one is home (also a checkout's that held one only while it waited for routing or a
   * replica's replay, and failed at close).
   */
  #releasePermit(): void {
    this.#sem.release();
    if (this.#drained !== undefined && this.busy === 0) this.#drained();
  }

  #checkedOut(conn: ServerConnection, started: number): ServerConnection {
    // The seat queue counts and times its hold when it seats someone (#seekSeats).
    if (started === FOR_SEATS) return conn;
    this.counters.checkouts++;
    if (this.context.hooks !== undefined) {
      this.#observeCheckout(conn, performance.now() - started);
    }
    return conn;
  }

  /**
   * Nothing is routable: probes every server and goes on as soon as one can serve the group,
   * without waiting for the others (a server hanging in its shutdown would hold the checkout
   * for a whole probe deadline). Gives up once every probe has answered or timed out, or
   * earlier at the checkout's own deadline (`limitMs` from `started`: `AcquireTimeoutError`) or
   * when its `signal` aborts.
   */
  async #findEndpoint(signal?: AbortSignal, started = 0, limitMs?: number): Promise<void> {
    const topology = this.context.topology;
    topology.start();
    const probed = topology.refresh();
    if (this.#members.length === 0) {
      signal?.throwIfAborted();
      // The checkout's own deadline and signal end the wait too: a probe may take longer.
      let wake!: (why?: "late" | "aborted") => void;
      const routed = new Promise<"late" | "aborted" | undefined>((resolve) => wake = resolve);
      this.#awaitingRoute.push(wake);
      const timer = limitMs === undefined
        ? undefined
        : setTimeout(() => wake("late"), Math.max(0, started + limitMs - performance.now()));
      const onAbort = () => wake("aborted");
      signal?.addEventListener("abort", onAbort, { once: true });
      const why = await Promise.race([probed, routed]);
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      const at = this.#awaitingRoute.indexOf(wake);
      if (at >= 0) this.#awaitingRoute.splice(at, 1);
      if (this.#members.length === 0 && !this.closing) {
        if (why === "aborted") throw signal!.reason;
        if (why === "late") throw this.timedOut(limitMs!);
      }
    }
    if (this.closing) throw new PoolClosedError();
    if (this.#members.length > 0) return;
    const states = this.#all.map(({ endpoint: e }) =>
      `${e.info.host}:${e.info.port} ${e.state} ${e.role}${
        e.state === "down" && e.lastError ? ` (${e.lastError})` : ""
      }`
    );
    throw new NoEndpointAvailableError(
      this.name,
      `no ${this.settings.role === "any" ? "healthy" : this.settings.role} endpoint (${
        states.join(", ")
      })`,
    );
  }

  /**
   * Read-your-writes: a replica member that has replayed `lsn`, polling replay positions until
   * `read_your_writes_timeout_ms`; then the primary, which always has it. Each replica is asked
   * on its own: the first one to answer at or past `lsn` is taken at once, never after the
   * others' answers (a silent replica answers only at its probe deadline).
   */
  async #takeAfter(
    lsn: bigint,
    signal: AbortSignal | undefined,
    started: number,
    limitMs: number | undefined,
  ): Promise<ServerConnection> {
    const topology = this.context.topology;
    // Replicas get read_your_writes_timeout_ms to have the write, never more than the checkout
    // has left of its own deadline: then the primary, which has it.
    let until = performance.now() + this.settings.readYourWritesTimeoutMs;
    if (limitMs !== undefined && started >= 0) until = Math.min(until, started + limitMs);
    // A replica whose answer is still out is not asked again until it comes. Any answer, a
    // routing change, close() and the signal wake the wait.
    const asking = new Set<Endpoint>();
    let wake: (() => void) | undefined;
    let replayed = false;
    const onAbort = () => wake?.();
    signal?.addEventListener("abort", onAbort, { once: true });
    try {
      for (;;) {
        // Aborting cancels the checkout: it does not go on to the primary; nor does close(),
        // which also takes no replica once it began.
        signal?.throwIfAborted();
        if (this.closing) throw new PoolClosedError();
        // A token is a position of the primary's timeline: a replica still on an older
        // primary's (a split brain) may be past it with other WAL.
        const replicas = this.#members.filter((m) =>
          m.endpoint.role === "replica" && topology.onPrimaryTimeline(m.endpoint)
        );
        const n = replicas.length;
        for (let k = 0; k < n; k++) {
          const member = replicas[(this.#cursor + k) % n];
          const at = member.endpoint.lsn;
          if (at !== undefined && at >= lsn) {
            this.#cursor = (this.#cursor + k + 1) % Math.max(1, this.#members.length);
            return this.#takeFrom(member);
          }
        }
        if (n === 0 || performance.now() >= until) break;
        for (const { endpoint } of replicas) {
          if (asking.has(endpoint)) continue;
          asking.add(endpoint);
          topology.replayLsn(endpoint).then((at) => {
            if (at !== undefined && at >= lsn) replayed = true;
          }, () => {}).then(() => {
            asking.delete(endpoint);
            wake?.();
          });
        }
        // A silent replica answers only at its probe deadline: the checkout's own comes first.
        let woke!: () => void;
        const woken = new Promise<void>((resolve) => woke = resolve);
        wake = woke;
        this.#awaitingRoute.push(woke);
        await withDeadline(woken, until - performance.now()).catch(() => {});
        const at = this.#awaitingRoute.indexOf(woke);
        if (at >= 0) this.#awaitingRoute.splice(at, 1);
        wake = undefined;
        if (replayed) {
          replayed = false;
          continue;
        }
        // An answer short of `lsn`: that replica is asked again a little later.
        await sleep(Math.min(10, Math.max(0, until - performance.now())));
      }
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
    if (this.closing) throw new PoolClosedError();
    const primary = topology.primary();
    const member = this.#all.find((m) => m.endpoint === primary);
    if (member === undefined) {
      throw new NoEndpointAvailableError(
        this.name,
        "no replica replayed the read-your-writes position in time and the group cannot use the primary",
      );
    }
    return this.#takeFrom(member);
  }

  /**
   * Picks a connection for a permit just taken. Starts at the rotation cursor so sequential
   * checkouts alternate endpoints; a member below its fair share opens a new connection rather
   * than letting another endpoint's idle one win, which keeps the spread even.
   */
  #take(): ServerConnection {
    const members = this.#members;
    const n = members.length;
    const canGrow = this.#conns.size < this.settings.size;
    let i = this.#cursor;
    for (let k = 0; k < n; k++) {
      const member = members[i];
      if (++i === n) i = 0;
      const conn = this.#popIdle(member);
      if (conn !== undefined) {
        this.#cursor = i;
        return conn;
      }
      if (canGrow && member.open < this.#share) {
        this.#cursor = i;
        return this.#open(member);
      }
    }
    // Every member is at its share yet a permit was free (connections are still being rolled
    // back or warmed). A connection warming in the background is as good as a new one (the
    // statement queues behind its ping) and keeps the group within connection_count; else
    // open one more on the least loaded member.
    if (this.#conns.size >= this.settings.size) {
      for (const conn of this.#warming) {
        this.#warming.delete(conn);
        return conn;
      }
    }
    let least = members[0];
    for (const member of members) if (member.open < least.open) least = member;
    return this.#open(least);
  }

  #takeFrom(member: Member): ServerConnection {
    return this.#popIdle(member) ?? this.#open(member);
  }

  /** The most recently used idle connection still worth using; dead or expired ones close. */
  #popIdle(member: Member): ServerConnection | undefined {
    for (;;) {
      const conn = member.idle.pop();
      if (conn === undefined) return undefined;
      // The clock is read only when the group retires connections at all.
      if (conn.dead || (this.#expires && this.#expired(conn, performance.now()))) {
        this.#discard(conn);
        continue;
      }
      conn.state = "held";
      return conn;
    }
  }

  #expired(conn: ServerConnection, now: number): boolean {
    const idleLimit = this.settings.idleTimeoutMs;
    return now > conn.retireAt ||
      (idleLimit !== undefined && conn.lastUsed > 0 && now - conn.lastUsed > idleLimit);
  }

  #open(member: Member): ServerConnection {
    // Never more server connections than connection_count: an idle one elsewhere makes room
    // (the least recently used of the member with the most idle).
    if (this.#conns.size >= this.settings.size) {
      let most: Member | undefined;
      for (const m of this.#all) if (m.idle.length > (most?.idle.length ?? 0)) most = m;
      if (most !== undefined) this.#discard(most.idle.shift()!);
      else {
        // No idle one: a connection still warming (it holds no permit) gives way instead.
        for (const warming of this.#warming) {
          this.#warming.delete(warming);
          this.#discard(warming);
          break;
        }
      }
    }
    const lifetime = this.settings.maxLifetimeMs;
    // Jitter fixed per connection so connections opened together do not retire together.
    const retireAt = lifetime === undefined
      ? Infinity
      : performance.now() + lifetime * (0.85 + Math.random() * 0.15);
    const conn = new ServerConnection(member, retireAt, this.context.onParameter, (ms) => {
      this.context.hooks?.connected(this.name, ms);
    });
    member.open++;
    this.#conns.add(conn);
    this.context.topology.start();
    return conn;
  }

  #discard(conn: ServerConnection): Promise<void> | undefined {
    if (!this.#conns.delete(conn)) return;
    conn.state = "closing";
    conn.member.open--;
    return conn.end(0);
  }

  /** Opens a replacement in the background so that retiring never makes a caller wait. */
  #warm(member: Member): void {
    if (
      this.closing || !member.active || member.open >= this.#share ||
      this.#conns.size >= this.settings.size
    ) return;
    const conn = this.#open(member);
    this.#warming.add(conn);
    conn.ping(member.endpoint.connectTimeoutS * 1000).then(
      () => {
        // Taken by a checkout meanwhile: it is theirs now.
        if (!this.#warming.delete(conn)) return;
        conn.lastUsed = performance.now();
        if (this.closing || !member.active || conn.dead) this.#discard(conn);
        else {
          conn.state = "idle";
          member.idle.push(conn);
        }
      },
      () => {
        if (this.#warming.delete(conn)) this.#discard(conn);
      },
    );
  }

  /**
   * Swaps the connection of a checkout for another under the same permit (only before the
   * checkout's first statement ran), on `sameServer` or wherever routing says. During `close()`
   * nothing new opens: `PoolClosedError`.
   */
  replace(conn: ServerConnection, sameServer = false): ServerConnection {
    if (this.closing) throw new PoolClosedError();
    const member = conn.member;
    this.#discard(conn);
    // Nothing routable any more (a checkout moving off waits for routing first: this is a
    // pinned one, or routing changed meanwhile): stay on the same server; the next statement
    // reports why.
    const next = sameServer || this.#members.length === 0 ? this.#open(member) : this.#take();
    // One hold, whichever connection serves it: its use_time counts from the checkout.
    next.heldSince = conn.heldSince;
    return next;
  }

  /**
   * Whether what `conn`'s refused session carried may run on another server: the refusal took
   * its server out of routing (a full server stays in: trying it again would only add load) and
   * another server is routable.
   */
  movesRefused(conn: ServerConnection): boolean {
    return conn.endpoint.state === "down" && this.#members.length > 0;
  }

  /**
   * What the caller hears of a refused session that no other server could take: the server is
   * out of reach, `NoEndpointAvailableError` with the driver's error as `cause` (what later
   * checkouts hear too while it is down). A full server's refusal (53300, 53400) is its own
   * error: the server is up.
   */
  refusalError(conn: ServerConnection, err: unknown): unknown {
    if (isCapacityError(err)) return err;
    const { host, port } = conn.endpoint.info;
    const e = err as { code?: unknown; message?: unknown } | null;
    const why = [e?.code, e?.message].filter((x) => typeof x === "string" && x !== "");
    return new NoEndpointAvailableError(
      this.name,
      `${host}:${port} refused the session (${why.length > 0 ? why.join(": ") : String(err)})`,
      { cause: err },
    );
  }

  /**
   * A statement failed on `conn` for a connection-level or read-only reason. A refusal of the
   * session itself takes the server out of routing at once (see `Topology.report`).
   */
  reportFailure(conn: ServerConnection, err: unknown): void {
    this.context.events.dispatchEvent(
      poolEvent("connectionerror", {
        group: this.name,
        endpoint: conn.endpoint.info,
        reason: reasonOf(err),
      }),
    );
    this.context.topology.report(conn.endpoint, err, conn.session.isRefusal(err));
  }

  /**
   * Returns a connection and its permit. The next user must never inherit a transaction left
   * open (rolled back first) nor session state (`residue`: reset, or the connection ended),
   * each within the endpoint's `connect_timeout`: a connection that does not answer in time is
   * ended, and its permit freed all the same. A shared connection a one-shot left state on
   * takes no more one-shots and is cleaned once the last one leaves.
   */
  checkin(
    conn: ServerConnection,
    txOpen: boolean,
    residue: Residue = CLEAN,
  ): Promise<void> | undefined {
    if (conn.state === "shared") {
      if (residue > conn.residue) {
        conn.residue = residue;
        this.#unshare(conn);
      }
      if (--conn.users > 0) {
        if (this.#seats.length > 0 && conn.users <= REFILL_AT) this.#refill(conn);
        return;
      }
      if (this.#seats.length > 0 && this.#refill(conn)) return;
      this.#unshare(conn);
      conn.state = "held";
      residue = conn.residue;
      conn.residue = CLEAN;
    }
    if ((txOpen || residue !== CLEAN) && !conn.dead) {
      return this.#cleanThenCheckin(conn, txOpen, residue);
    }
    this.#return(conn);
  }

  #unshare(conn: ServerConnection): void {
    const at = this.#shared.indexOf(conn);
    if (at >= 0) this.#shared.splice(at, 1);
  }

  #return(conn: ServerConnection): void {
    if (conn.heldSince !== 0) {
      this.context.hooks?.checkin(this.name, performance.now() - conn.heldSince);
      conn.heldSince = 0;
    }
    let under: Member | undefined;
    if (this.closing || conn.dead || !conn.member.active) {
      this.#discard(conn);
    } else if (conn.member.open > this.#share && (under = this.#underShare()) !== undefined) {
      // A member holds more than its share while another has less (it came back): move one.
      this.#discard(conn);
      this.#warm(under);
    } else if (conn.retireAt !== Infinity && performance.now() > conn.retireAt) {
      this.#discard(conn);
      this.#warm(conn.member);
    } else {
      conn.state = "idle";
      conn.member.idle.push(conn);
    }
    this.#releasePermit();
    this.context.lazyUpkeep?.();
  }

  async #cleanThenCheckin(
    conn: ServerConnection,
    txOpen: boolean,
    residue: Residue,
  ): Promise<void> {
    this.#rollingBack.add(conn);
    const endpoint = conn.endpoint;
    try {
      if (txOpen) await this.#clean(conn, "ROLLBACK", endpoint.controlOptions);
      if (residue === RESETTABLE) {
        // Several statements: sent as the endpoint sends a text it never prepares.
        await this.#clean(conn, RESET_SESSION, endpoint.statementOptions(RESET_SESSION, [], false));
      } else if (residue === UNRESETTABLE) conn.end(0);
    } catch {
      // No answer, or an unknown state: not reusable. Ending the session rolls back.
      conn.end(0);
    }
    this.#rollingBack.delete(conn);
    this.#return(conn);
  }

  // Observed like every statement (OpenTelemetry): the group's own ROLLBACK and reset.
  async #clean(conn: ServerConnection, text: string, options: StatementOptions): Promise<void> {
    const endpoint = conn.endpoint;
    const done = this.context.hooks?.statement({
      group: this.name,
      text,
      endpoint: endpoint.info,
      database: endpoint.database,
    });
    try {
      await withDeadline(
        conn.session.query(text, undefined, options),
        endpoint.connectTimeoutS * 1000,
      );
      conn.lastUsed = performance.now();
      done?.(undefined);
    } catch (err) {
      done?.(err);
      throw err;
    }
  }

  /** Closes idle connections past `idle_timeout_ms`, retires those past their lifetime. */
  maintain(now: number): void {
    for (const member of this.#all) {
      const keep: ServerConnection[] = [];
      let retired = 0;
      for (const conn of member.idle) {
        if (conn.dead) this.#discard(conn);
        else if (now > conn.retireAt) {
          this.#discard(conn);
          retired++;
        } else if (this.#expired(conn, now)) {
          this.#discard(conn);
        } else keep.push(conn);
      }
      if (keep.length !== member.idle.length) {
        member.idle.length = 0;
        member.idle.push(...keep);
      }
      for (let i = 0; i < retired; i++) this.#warm(member);
    }
  }

  /**
   * Graceful close: waiters fail and nothing new opens at once; idle connections end now;
   * checkouts held at this moment may finish their work for up to `timeoutMs`; then every
   * connection is ended, and statements on any old handler fail with `PoolClosedError`.
   */
  async close(timeoutMs: number): Promise<void> {
    this.closing = true;
    this.#sem.rejectAll(new PoolClosedError());
    this.#seats.rejectAll(new PoolClosedError());
    for (const wake of this.#awaitingRoute.splice(0)) wake();
    const ends: (Promise<void> | undefined)[] = [];
    for (const member of this.#all) {
      for (const conn of member.idle.splice(0)) ends.push(this.#discard(conn));
    }
    // A check-in rollback is no caller's work: ending its session rolls back all the same, and
    // on a silent host it would hold close() for close_timeout_ms.
    for (const conn of this.#rollingBack) ends.push(conn.end(0));
    if (this.busy > 0 && timeoutMs > 0) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#drained = resolve;
        timer = setTimeout(resolve, timeoutMs);
      });
      clearTimeout(timer);
      this.#drained = undefined;
    }
    this.ended = true;
    for (const conn of this.#conns) ends.push(conn.end(0));
    this.#conns.clear();
    for (const member of this.#all) member.open = 0;
    await Promise.all(ends);
  }
}

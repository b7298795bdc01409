/**
 * What the pool knows of its servers: each endpoint's role (detected, never configured), health
 * (a half-open circuit breaker with jittered exponential back-off), WAL position and lag. Probes
 * run in the background every `health_check_interval_ms`, faster while a primary is missing,
 * and at once when a statement reports trouble.
 *
 * @module
 */

import type { DriverSession } from "./driver/session.ts";
import type { Endpoint, EndpointRole } from "./endpoint.ts";
import { poolEvent, reasonOf } from "./events.ts";
import { parseLsn } from "./lsn.ts";
import { withDeadline } from "./deadline.ts";
import { LSN_SQL } from "./token.ts";
import { REQUEST_BOUND_IO } from "./request_bound.ts";
import {
  isCapacityError,
  isConnectionError,
  isPrivilegeError,
  isReadOnlyError,
} from "./sqlstate.ts";

// One round trip: role, WAL position and the replica's own view of its lag. The lag is only
// meaningful while received WAL waits for replay (else NULL: the replica is caught up with what
// it has, and LSN comparison with the primary covers a stalled receiver).
const PROBE_BASE_SQL = `SELECT pg_is_in_recovery() AS recovery,
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text AS lsn,
  CASE WHEN pg_is_in_recovery() AND pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()
    THEN coalesce(extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000, 0)::float8
    END AS lag_ms,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END AS walfile`;
// And a replica's timeline, at least: the later of its last restartpoint's and its minimum
// recovery point's (both in pg_control, executable by PUBLIC unless revoked; a replica's replay
// never goes back to an earlier timeline, and its current one is not readable without
// pg_read_all_stats). A role denied them (42501) is probed with PROBE_BASE_SQL instead.
const PROBE_SQL = `${PROBE_BASE_SQL},
  CASE WHEN pg_is_in_recovery() THEN greatest(
    (SELECT timeline_id FROM pg_control_checkpoint()),
    (SELECT min_recovery_end_timeline FROM pg_control_recovery())) END AS replay_tli`;

/** What a probe reads. `walfile` (a primary's current WAL file) starts with its timeline. */
interface ProbeRow {
  recovery: boolean;
  lsn: string | null;
  lag_ms: number | null;
  walfile: string | null;
  /** On a replica, a timeline its replay has reached (absent where pg_control is denied). */
  replay_tli?: number | null;
}

/** The timeline in a WAL file name: its first 8 hex digits. */
function timelineOf(walfile: string | null): number | undefined {
  if (typeof walfile !== "string" || !/^[0-9A-F]{24}$/i.test(walfile)) return undefined;
  return parseInt(walfile.slice(0, 8), 16);
}

const REPLAY_SQL = "SELECT pg_last_wal_replay_lsn()::text AS lsn";

/** How often probes may repeat for the same endpoint when asked on demand. */
const MIN_PROBE_GAP_MS = 25;
/** Background period while a primary is missing, so a promotion is seen quickly. */
const FAST_INTERVAL_MS = 100;
/** First back-off step after a failure. */
const BACKOFF_BASE_MS = 100;

interface PrimarySample {
  lsn: bigint;
  at: number;
}

/** Settings of a topology. */
export interface TopologyOptions {
  readonly intervalMs: number;
  readonly backoffMaxMs: number;
  /** Deadline of one probe (capped by each endpoint's `connect_timeout`). */
  readonly probeTimeoutMs: number;
  /** Whether some group needs a primary and has none routable (then probing runs faster). */
  readonly primaryWanted: () => boolean;
  /**
   * Some group routes by `max_replica_lag_ms`: a replica known from a session's start-up is
   * probed at once for its lag (else nothing needs it, and an edge pool would pay a session).
   */
  readonly lagLimited: boolean;
  /**
   * Whether some live connection to the endpoint is checked out (held by a checkout or shared
   * by one-shots): every statement in flight on it is, also one the pool cannot follow to its
   * end (`db.sql`). The groups own their connections and answer.
   */
  readonly checkedOut: (endpoint: Endpoint) => boolean;
}

const PROBE = { prepare: false };

/** What a witness session sends to log in (a session dials on its first statement). */
const WITNESS_SQL = "SELECT 1";

/** Role and health of every endpoint of a pool. */
export class Topology {
  readonly endpoints: readonly Endpoint[];
  readonly #options: TopologyOptions;
  readonly #events: EventTarget;
  readonly #clients = new Map<Endpoint, DriverSession>();
  readonly #watchdogs = new Map<Endpoint, ReturnType<typeof setTimeout>>();
  /** `performance.now()` when each armed watchdog is due (see `watch`). */
  readonly #watchdogDue = new Map<Endpoint, number>();
  /** Probe timeouts of a server that logged a session in meanwhile (see `#ask`). */
  readonly #busy = new WeakSet<object>();
  readonly #listeners: (() => void)[] = [];
  readonly #tickers: ((now: number) => void)[] = [];
  readonly #history: PrimarySample[] = [];
  /**
   * Whose positions `#history` holds: one primary on one timeline. Another primary's (a split
   * brain's later one, found after an older one was probed) are of another history.
   */
  #historyOf: Endpoint | undefined;
  #historyTimeline: number | undefined;
  #timer: ReturnType<typeof setTimeout> | undefined;
  /** `performance.now()` when the armed background round is due. */
  #due = Infinity;
  #started = false;
  #closed = false;

  constructor(endpoints: readonly Endpoint[], options: TopologyOptions, events: EventTarget) {
    this.endpoints = endpoints;
    this.#options = options;
    this.#events = events;
  }

  /** Calls `fn` whenever roles, health or lag change routing. */
  onChange(fn: () => void): void {
    this.#listeners.push(fn);
  }

  /** Calls `fn` after every background round (connection upkeep rides on the same timer). */
  onTick(fn: (now: number) => void): void {
    this.#tickers.push(fn);
  }

  /** Starts background probing (once, at the pool's first connection: construction is lazy). */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    if (this.#options.intervalMs > 0) this.#schedule(0);
  }

  #schedule(delayMs: number): void {
    this.#due = performance.now() + delayMs;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#due = Infinity;
      if (this.#closed) return;
      // Not awaited: a server that hangs holds up its own probe only, never the next round
      // (which would keep a promotion elsewhere unseen for as long).
      this.refresh(false);
      const now = performance.now();
      for (const fn of this.#tickers) fn(now);
      const interval = this.#options.intervalMs;
      this.#schedule(this.#primaryInDoubt() ? Math.min(interval, FAST_INTERVAL_MS) : interval);
    }, delayMs);
  }

  /**
   * A primary is wanted and missing, or the one we have failed a statement since it last
   * answered a probe: a switchover may be under way, so look for the new one quickly.
   */
  #primaryInDoubt(): boolean {
    if (this.#options.primaryWanted()) return true;
    const primary = this.primary();
    return primary !== undefined && primary.reportedAt > primary.answeredAt;
  }

  /**
   * The current primary. When several claim the role (a split brain: a replica promoted while
   * its old primary kept running), the one on the later timeline, which every pool can read,
   * also one that started after the promotion; while a timeline is not known yet, the one this
   * pool last saw promoted; else the first configured.
   */
  primary(): Endpoint | undefined {
    let best: Endpoint | undefined;
    for (const e of this.endpoints) {
      if (e.role !== "primary" || e.state !== "up") continue;
      if (best === undefined || laterPromotion(e, best)) best = e;
    }
    return best;
  }

  /**
   * Probes every endpoint that is due: up ones (unless probed a moment ago) and down ones whose
   * back-off has passed. Resolves when all of them answered or gave up; concurrent callers share
   * each endpoint's probe in flight, and nobody waits for a probe it did not need: a caller
   * that only wants some routable server watches `onChange` instead.
   */
  refresh(force = true): Promise<void> {
    if (this.#closed) return Promise.resolve();
    const now = performance.now();
    const probes: Promise<void>[] = [];
    for (const e of this.endpoints) {
      const due = e.state === "up"
        ? !force || now - e.lastProbeAt >= MIN_PROBE_GAP_MS
        : now >= e.retryAt;
      if (due || e.probing !== undefined) probes.push(this.probe(e));
    }
    return Promise.all(probes).then(() => {});
  }

  /** How long a probe of `endpoint` (or any other proof that it answers) may take. */
  deadline(endpoint: Endpoint): number {
    return Math.min(this.#options.probeTimeoutMs, endpoint.connectTimeoutS * 1000);
  }

  /**
   * With background probing off: makes sure `endpoint` is probed `connect_timeout` from now
   * (one timer per endpoint, armed by statements as they are sent), and again every
   * `connect_timeout` for as long as a connection to it is checked out: a statement may outlive
   * any one probe. A server that went silent under a statement is then marked down and its
   * connections are cut, instead of the statement waiting for TCP to give up. Nothing per
   * statement but a map lookup: the timer re-arms itself.
   */
  watch(endpoint: Endpoint): void {
    if (this.#closed) return;
    if (this.#watchdogs.has(endpoint) && !(REQUEST_BOUND_IO && this.#lapsed(endpoint))) return;
    this.#arm(endpoint);
  }

  /**
   * Where I/O is bound to a request (workerd), a watchdog armed by a request that has ended never
   * fires (its timers stop with it): one overdue by a whole period is armed afresh by the next
   * statement, else a pool kept at module scope would never watch that server again.
   */
  #lapsed(endpoint: Endpoint): boolean {
    const ms = endpoint.connectTimeoutS * 1000;
    return performance.now() > (this.#watchdogDue.get(endpoint) ?? Infinity) + ms;
  }

  #arm(endpoint: Endpoint): void {
    const ms = endpoint.connectTimeoutS * 1000;
    const timer = setTimeout(() => {
      // Replaced by a fresh one (see `#lapsed`): one chain per endpoint.
      if (this.#watchdogs.get(endpoint) !== timer) return;
      this.#watchdogs.delete(endpoint);
      this.#watchdogDue.delete(endpoint);
      if (this.#closed) return;
      this.probe(endpoint);
      // Checked out: statements may be in flight there (also db.sql ones, whose end the pool
      // cannot see), or be sent without a timer armed in between: watch on.
      if (this.#options.checkedOut(endpoint)) this.#arm(endpoint);
    }, ms);
    this.#watchdogs.set(endpoint, timer);
    this.#watchdogDue.set(endpoint, performance.now() + ms);
  }

  /** Probes one endpoint (at most one probe in flight per endpoint). */
  probe(endpoint: Endpoint): Promise<void> {
    if (this.#closed) return Promise.resolve();
    endpoint.probing ??= this.#probe(endpoint).finally(() => {
      endpoint.probing = undefined;
    });
    return endpoint.probing;
  }

  async #probe(endpoint: Endpoint): Promise<void> {
    const started = performance.now();
    let row: ProbeRow;
    try {
      row = await this.#ask(endpoint);
    } catch (err) {
      // A server that is full still answers: capacity is not health. So does one that logs a
      // session in but runs nothing in time (see `#ask`): taking an up server down for that
      // would cut the statements it is running.
      const busy = this.#busy.has(err as object) && endpoint.state === "up";
      if (!this.#closed && !isCapacityError(err) && !busy) this.markDown(endpoint, err);
      return;
    } finally {
      endpoint.lastProbeAt = performance.now();
      endpoint.probes++;
    }
    if (this.#closed) return;
    endpoint.answeredAt = endpoint.lastProbeAt;
    const rtt = endpoint.lastProbeAt - started;
    endpoint.latencyMs = endpoint.latencyMs === undefined
      ? rtt
      : endpoint.latencyMs * 0.8 + rtt * 0.2;
    const lsn = parseLsn(row.lsn);
    const now = performance.now();
    if (row.recovery && row.lag_ms !== null) {
      // The replica's own figure is the age of the last transaction it replayed: after a quiet
      // spell, the first write waiting for replay would count the whole spell. What waits
      // arrived after the replica was last seen with nothing to replay, so no more than that.
      const own = Math.min(Number(row.lag_ms) || 0, now - endpoint.caughtUpAt);
      endpoint.lagMs = Math.max(own, this.#lagByLsn(lsn, now));
    } else {
      endpoint.lagMs = row.recovery ? this.#lagByLsn(lsn, now) : 0;
      // Nothing waits for replay: caught up with what it received, which is caught up with the
      // primary only when the primary's positions say so. A replica whose WAL stream stalled has
      // nothing to replay either, and the backlog it receives later is as old as the stall: with
      // the primary out of reach (or ahead of it), the stall must not cap its own figure.
      if (!row.recovery || (endpoint.lagMs === 0 && this.primary() !== undefined)) {
        endpoint.caughtUpAt = started;
      }
    }
    // Up first, then what it came back as: listeners see the events in that order.
    const cameUp = this.#markUp(endpoint);
    const changed = this.observeRole(endpoint, row.recovery ? "replica" : "primary", false);
    endpoint.lsn = lsn;
    endpoint.lagKnown = true;
    const timeline = row.recovery ? undefined : timelineOf(row.walfile);
    endpoint.replayTimeline = row.recovery && typeof row.replay_tli === "number" &&
        row.replay_tli > 0
      ? row.replay_tli
      : undefined;
    const newTimeline = timeline !== endpoint.timeline;
    endpoint.timeline = timeline;
    // Replicas' lag is measured against the primary's positions: a second, older primary's
    // positions are of another history.
    if (!row.recovery && lsn !== undefined && endpoint === this.primary()) {
      this.#remember(endpoint, timeline, lsn, now);
    }
    if (changed || cameUp || newTimeline || row.recovery) this.#changed();
  }

  // One probe round trip, all of it within one probe deadline. A reused probe session found
  // dead (reset or closed, its connection perhaps cut long ago) says nothing about the server,
  // so a fresh session gets the time left; one that stays silent used the whole deadline, and
  // the server is as silent as it: a second full deadline would double the time a hung host
  // holds the statements stuck on it.
  //
  // A query that times out on a session the server logged in is not silence, though: PgBouncer
  // logs clients in itself and queues their statements while its server connections are all
  // busy (a long statement of the pool's own is enough), and the probe waits in that queue.
  // Taking the server down then cut every connection to it, the running statements with it.
  // A fresh session whose login finished within the deadline proves the host answers (a hung or
  // cut-off host completes no login): the error is marked busy, and `#probe` leaves an up server
  // up. A reused session was logged in long ago, so halfway through its wait a witness session
  // is opened to log in afresh.
  async #ask(
    endpoint: Endpoint,
  ): Promise<ProbeRow> {
    const until = performance.now() + this.deadline(endpoint);
    for (;;) {
      const client = this.#session(endpoint);
      const reused = client.established;
      let witness: DriverSession | undefined;
      const timer = reused
        ? setTimeout(() => {
          if (this.#closed) return;
          witness = endpoint.probeSession();
          witness.query(WITNESS_SQL, undefined, PROBE).catch(() => {});
        }, Math.max((until - performance.now()) / 2, 1))
        : undefined;
      try {
        const rows = await withDeadline(
          client.query(endpoint.controlDenied ? PROBE_BASE_SQL : PROBE_SQL, undefined, PROBE),
          Math.max(until - performance.now(), 1),
        );
        return rows[0] as unknown as ProbeRow;
      } catch (err) {
        const loggedIn = reused ? witness?.established === true : client.established;
        if (loggedIn && (err as { code?: unknown } | null)?.code === "ETIMEDOUT") {
          // The deadline is spent (its timer may fire a hair early): no fresh session now.
          this.#busy.add(err as object);
          this.#discard(endpoint, client);
          throw err;
        }
        // pg_control revoked from this role: probe without the replica's timeline from now on.
        if (!endpoint.controlDenied && isPrivilegeError(err) && performance.now() < until) {
          endpoint.controlDenied = true;
          continue;
        }
        this.#discard(endpoint, client);
        if (!reused || this.#closed || !isConnectionError(err) || performance.now() >= until) {
          throw err;
        }
      } finally {
        clearTimeout(timer);
        witness?.end(0);
      }
    }
  }

  /**
   * A primary's WAL insert position read now on its probe session (`LSN_SQL`): the token of a
   * write whose own token query was lost after the write's acknowledgement, which this position
   * is past as well. `undefined` when the server is no primary any more, or does not answer
   * within one probe deadline.
   */
  async insertLsn(endpoint: Endpoint): Promise<string | undefined> {
    if (this.#closed) return undefined;
    const client = this.#session(endpoint);
    try {
      const rows = await withDeadline(
        client.query(LSN_SQL, undefined, PROBE),
        this.deadline(endpoint),
      );
      const lsn = rows[0]?.lsn;
      return typeof lsn === "string" ? lsn : undefined;
    } catch {
      this.#discard(endpoint, client);
      return undefined;
    }
  }

  /** The endpoint's probe session, opened afresh when there is none or it died. */
  #session(endpoint: Endpoint): DriverSession {
    let client = this.#clients.get(endpoint);
    if (client === undefined || client.dead) {
      client = endpoint.probeSession();
      this.#clients.set(endpoint, client);
    }
    return client;
  }

  /** A failed probe session may hold a half-dead socket: never reuse it. */
  #discard(endpoint: Endpoint, client: DriverSession): void {
    if (this.#clients.get(endpoint) === client) this.#clients.delete(endpoint);
    client.end(0);
  }

  /** Checks one replica's replay position right now (read-your-writes waits on it). */
  async replayLsn(endpoint: Endpoint): Promise<bigint | undefined> {
    const client = this.#clients.get(endpoint);
    if (client === undefined || client.dead || endpoint.state !== "up") {
      await this.probe(endpoint);
      return endpoint.lsn;
    }
    try {
      const rows = await withDeadline(
        client.query(REPLAY_SQL, undefined, PROBE),
        this.deadline(endpoint),
      );
      const lsn = parseLsn(rows[0]?.lsn);
      if (lsn !== undefined && endpoint.role === "replica") endpoint.lsn = lsn;
      return lsn;
    } catch {
      await this.probe(endpoint);
      return undefined;
    }
  }

  /**
   * Lag as the primary sees it: how long ago the primary had already written WAL this replica
   * has not replayed. Catches a stalled WAL receiver, which the replica cannot see itself.
   */
  #lagByLsn(lsn: bigint | undefined, now: number): number {
    if (lsn === undefined) return 0;
    for (const sample of this.#history) {
      if (sample.lsn > lsn) return now - sample.at;
    }
    return 0;
  }

  #remember(primary: Endpoint, timeline: number | undefined, lsn: bigint, at: number): void {
    // The primary changed without a promotion this pool saw (a later timeline that was out of
    // reach when an older primary answered): the old positions, maybe ahead of every new one,
    // would count a replica of the new primary as behind since they were taken.
    if (primary !== this.#historyOf || timeline !== this.#historyTimeline) {
      this.#history.length = 0;
      this.#historyOf = primary;
      this.#historyTimeline = timeline;
    }
    const last = this.#history[this.#history.length - 1];
    if (last !== undefined && last.lsn === lsn) return;
    this.#history.push({ lsn, at });
    if (this.#history.length > 256) this.#history.shift();
  }

  /**
   * Whether a replica's WAL positions can be compared with the current primary's (a read-your-
   * writes token, the primary's positions for lag). While several servers claim the primary
   * role (a split brain this pool sees), a replica may still follow the older one, on its
   * timeline, where the same positions hold other WAL: only one known to have reached the
   * primary's timeline is. Without a split brain, every replica (as before).
   */
  onPrimaryTimeline(replica: Endpoint): boolean {
    let primaries = 0;
    for (const e of this.endpoints) if (e.role === "primary" && e.state === "up") primaries++;
    if (primaries < 2) return true;
    const primary = this.primary();
    return primary !== undefined && primary.timeline !== undefined &&
      replica.replayTimeline === primary.timeline;
  }

  /** Records a role seen on a connection or probe; returns whether it changed. */
  observeRole(endpoint: Endpoint, role: EndpointRole, notify = true): boolean {
    const from = endpoint.role;
    if (from === role) return false;
    endpoint.role = role;
    // A timeline belongs to the role it was read in (a start-up parameter tells no timeline),
    // and so does lag: a replica's is measured by its next probe, asked for now when the role
    // came from a session (routing with max_replica_lag_ms skips it until then).
    endpoint.timeline = undefined;
    endpoint.replayTimeline = undefined;
    endpoint.lagKnown = false;
    // So does a WAL position: a primary's insert position is no replay position (read-your-
    // writes would take a server that became a replica for having a token it never replayed).
    endpoint.lsn = undefined;
    if (role === "primary" && from === "replica") {
      endpoint.promotedAt = performance.now();
      // WAL positions of the old timeline say nothing about the new one.
      this.#history.length = 0;
    }
    this.#events.dispatchEvent(
      poolEvent("rolechange", { endpoint: endpoint.info, from, to: role }),
    );
    if (notify) {
      this.#changed();
      if (role === "replica" && this.#options.lagLimited) this.probe(endpoint).catch(() => {});
    }
    return true;
  }

  /**
   * A statement or connect failed on `endpoint`. A session the server refused outright (it
   * could not even start) is the answer a probe would get, so the endpoint is down at once and
   * the checkouts that follow go elsewhere; any other failure triggers a probe, which decides.
   * A full server (53300, 53400) is neither marked down nor probed.
   */
  report(endpoint: Endpoint, err: unknown, refused = false): void {
    if (this.#closed) return;
    endpoint.errors++;
    if (isCapacityError(err)) return;
    endpoint.reportedAt = performance.now();
    // The primary failing puts it in doubt: the next round comes now-ish, not a period later.
    if (
      endpoint === this.primary() && this.#timer !== undefined &&
      this.#due > endpoint.reportedAt + FAST_INTERVAL_MS
    ) {
      clearTimeout(this.#timer);
      this.#schedule(FAST_INTERVAL_MS);
    }
    if (!refused) this.probe(endpoint);
    // Concurrent refusals of one server count as one failure (the back-off grows per probe).
    else if (endpoint.state !== "down") this.markDown(endpoint, err);
    // A primary that went read-only or away: look for the new one everywhere.
    if (isReadOnlyError(err) || endpoint.role === "primary") this.refresh();
  }

  /** Opens the circuit: routing skips the endpoint until a probe after the back-off succeeds. */
  markDown(endpoint: Endpoint, err: unknown): void {
    // The back-off only starts over once the server has stayed up for a full back-off period:
    // a server that flaps keeps backing off further.
    const now = performance.now();
    if (endpoint.state === "up" && now - endpoint.upSince > this.#options.backoffMaxMs) {
      endpoint.failures = 0;
    }
    endpoint.failures++;
    endpoint.lastError = reasonOf(err);
    const step = Math.min(
      this.#options.backoffMaxMs,
      BACKOFF_BASE_MS * 2 ** Math.min(endpoint.failures - 1, 20),
    );
    endpoint.retryAt = now + step / 2 + Math.random() * step / 2;
    if (endpoint.state === "down") return;
    endpoint.state = "down";
    endpoint.caughtUpAt = -Infinity;
    this.#events.dispatchEvent(
      poolEvent("endpointdown", { endpoint: endpoint.info, reason: reasonOf(err) }),
    );
    this.#changed();
  }

  #markUp(endpoint: Endpoint): boolean {
    if (endpoint.state === "up") return false;
    endpoint.state = "up";
    endpoint.upSince = performance.now();
    this.#events.dispatchEvent(poolEvent("endpointup", { endpoint: endpoint.info }));
    return true;
  }

  #changed(): void {
    for (const fn of this.#listeners) fn();
  }

  /** Stops probing and ends the probe connections. */
  async close(timeoutMs: number): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    for (const timer of this.#watchdogs.values()) clearTimeout(timer);
    this.#watchdogs.clear();
    this.#watchdogDue.clear();
    this.#timer = undefined;
    const clients = [...this.#clients.values()];
    this.#clients.clear();
    await Promise.all(clients.map((c) => c.end(timeoutMs)));
  }
}

/** Whether primary `a` was promoted after primary `b` (see `Topology.primary`). */
function laterPromotion(a: Endpoint, b: Endpoint): boolean {
  if (a.timeline !== undefined && b.timeline !== undefined && a.timeline !== b.timeline) {
    return a.timeline > b.timeline;
  }
  return a.promotedAt > b.promotedAt;
}

// The pool in front of a Patroni HA cluster (tests/harness/patroni.ts: etcd + three Patroni
// nodes of PostgreSQL, synchronous mode, pg_rewind), under a steady concurrent workload:
// a planned switchover, a crash of the leader (kill -9 of its Patroni and its postmaster), and
// the crashed node rejoining as a replica.
//
// The switchover has its own pool. The crash phase's pool and workload carry on into the rejoin
// phase: the failure this guards against was a pool that saw a node fail and return, and whose
// replica connections stayed on the surviving replica for good. Beside it, the rejoin phase runs
// a fresh pool started while the node is down. Every pool (all three nodes, the leader not first)
// gets the same checks: every acknowledged commit on the final leader, no transaction half
// applied, no replica-group read sent to a server the pool already knew to be the leader (for
// the carried pool at the end of the crash phase, while it keeps running, and again at the end),
// and no connection of the pool left after close().
//
// Runs in the pass against Debian's PostgreSQL (PGDBPOOL_PG_BIN); Patroni needs pg_rewind and
// pg_basebackup, which the embedded PostgreSQL package does not ship. When Patroni, etcd or those
// tools are missing the test skips and says what is missing; with PGDBPOOL_REQUIRE_PATRONI=1
// (.ci/run sets it) it fails instead, so CI cannot pass without the lab having run.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import {
  PATRONI_TIMING,
  type PatroniLab,
  patroniMissing,
  type PatroniNode,
  startPatroni,
} from "./harness/patroni.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { sleep, waitFor } from "./harness/wait.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(180_000);

const RUNTIME = "Bun" in globalThis ? "bun" : "deno";
/** Writes must resume on the new leader within this long of Patroni reporting it. */
const RESUME_LIMIT_MS = 1_000;
/** The replica group must read from a rejoined node within this long of it streaming. */
const REJOIN_LIMIT_MS = 10_000;
/** How long a phase waits for a figure before failing with what it saw (beyond the limits). */
const FIGURE_TIMEOUT_MS = 30_000;

/** CI sets it: a Debian PostgreSQL pass that cannot run the lab fails instead of skipping. */
const REQUIRE = process.env.PGDBPOOL_REQUIRE_PATRONI === "1";
/** What the lab lacks here (checked in the Debian PostgreSQL pass only), or undefined. */
const MISSING = process.env.PGDBPOOL_PG_BIN ? patroniMissing() : undefined;
const SKIP = !process.env.PGDBPOOL_PG_BIN
  ? "the Patroni lab runs in the Debian PostgreSQL pass (PGDBPOOL_PG_BIN=/usr/lib/postgresql/15/bin)"
  : MISSING && !REQUIRE
  ? `${MISSING} (with PGDBPOOL_REQUIRE_PATRONI=1 this fails instead)`
  : false;
if (SKIP) console.log(`patroni_test: skipped: ${SKIP}`);

let lab: PatroniLab | undefined;
/** Why the lab is not usable, when before() failed: every test fails with it. */
let labError: unknown;
const figures: string[] = [];

before(async () => {
  if (SKIP) return;
  // Kept, not thrown: the runtimes report a throwing hook differently (Bun shows an error and
  // still runs the tests, which may then pass); each test throws it, a failure in both.
  try {
    if (MISSING) throw new Error(`PGDBPOOL_REQUIRE_PATRONI=1 and ${MISSING}`);
    const t0 = performance.now();
    lab = await startPatroni();
    const { leader } = await lab.waitHealthy();
    const own = `OWNER TO ${lab.user}`;
    await lab.query(leader, "CREATE TABLE lab_writes (id bigint PRIMARY KEY, phase text NOT NULL)");
    await lab.query(leader, `ALTER TABLE lab_writes ${own}`);
    await lab.query(
      leader,
      "CREATE TABLE lab_tx (tx bigint NOT NULL, part int NOT NULL, phase text NOT NULL, PRIMARY KEY (tx, part))",
    );
    await lab.query(leader, `ALTER TABLE lab_tx ${own}`);
    console.log(
      `patroni lab (${RUNTIME}): etcd + 3 Patroni nodes up in ${ms(performance.now() - t0)} ms ` +
        `(ttl ${PATRONI_TIMING.ttl} s, loop_wait ${PATRONI_TIMING.loop_wait} s, ` +
        `retry_timeout ${PATRONI_TIMING.retry_timeout} s, synchronous_mode, use_pg_rewind)`,
    );
  } catch (err) {
    labError = err;
  }
}, { timeout: 180_000 });

after(async () => {
  if (figures.length > 0) console.log(`\npatroni figures (${RUNTIME}):\n  ${figures.join("\n  ")}`);
  // A pool the crash phase handed over that no rejoin phase took (a filtered run).
  await handoff?.run.shutdown().catch(() => {});
  await lab?.close();
}, { timeout: 60_000 });

/** The running lab, or the reason it is not running (thrown, so the calling test fails). */
function theLab(): PatroniLab {
  if (labError !== undefined) throw labError;
  if (!lab) throw new Error("the Patroni lab did not start");
  return lab;
}

const ms = (n: number) => Math.round(n);

function errorKind(err: unknown): string {
  const e = err as { name?: string; code?: string; outcome?: string; message?: string };
  const parts = [e?.name ?? typeof err];
  if (e?.code) parts.push(e.code);
  if (e?.outcome) parts.push(e.outcome);
  return parts.join(":");
}

/** An acknowledged autocommit write (`id`) or transaction (`tx`), and where it committed. */
interface Ack {
  id: number;
  port: number;
  at: number;
}
interface Read {
  port: number;
  rec: boolean;
  at: number;
  /** The port was primary in pool.stats() when the read was sent. */
  knownAtSend: boolean;
  /** ... and still when it was answered. */
  knownAtAnswer: boolean;
}

/**
 * Concurrent loops per group, more than its connections: every connection a group may open is
 * open and busy, so nothing lands on a rejoined or promoted server just because a connection
 * happened to be missing.
 */
const LOOPS = { rw: 4, tx: 3, ro: 6, pref: 2 };
const CONNECTIONS = { rw: 3, tx: 2, ro: 4, pref: 2 };

let nextId = 1;
let nextTx = 1;

/**
 * The steady workload on one pool: autocommit writers and transactional writers on the primary
 * groups, readers on the replica and prefer-replica groups. Each loop paces itself a little (the
 * machine is small and shared) and keeps going through errors. Rows carry `phase`.
 */
class Workload {
  readonly acks: Ack[] = [];
  readonly txAcks: Ack[] = [];
  readonly reads: Read[] = [];
  readonly prefReads: Array<{ port: number; rec: boolean; at: number }> = [];
  readonly failures = new Map<string, number>();
  attempts = { write: 0, tx: 0, read: 0, pref: 0 };
  #running = true;
  #loops: Promise<void>[] = [];
  #stopped: Promise<void> | undefined;

  constructor(readonly pool: Pool, readonly phase: string) {}

  start(): void {
    this.#loops = [
      ...Array.from({ length: LOOPS.rw }, () => this.#writer()),
      ...Array.from({ length: LOOPS.tx }, () => this.#txWriter()),
      ...Array.from({ length: LOOPS.ro }, () => this.#reader()),
      ...Array.from({ length: LOOPS.pref }, () => this.#preferReader()),
    ];
  }

  /**
   * Ends every loop after its current statement (the loops never reject); later calls return
   * the first call's promise.
   */
  stop(): Promise<void> {
    this.#running = false;
    this.#stopped ??= Promise.all(this.#loops).then(() => {});
    return this.#stopped;
  }

  #fail(what: string, err: unknown): void {
    const key = `${what} ${errorKind(err)}`;
    this.failures.set(key, (this.failures.get(key) ?? 0) + 1);
  }

  failed(what: string): number {
    let n = 0;
    for (const [k, v] of this.failures) if (k.startsWith(what + " ")) n += v;
    return n;
  }

  /** The failures by kind, "write PostgresError:57P01 x3, ...", or "none". */
  failureList(): string {
    return [...this.failures].map(([k, v]) => `${k} x${v}`).join(", ") || "none";
  }

  #primaryPorts(): Set<number> {
    return new Set(
      this.pool.stats().endpoints.filter((e) => e.role === "primary").map((e) => e.port),
    );
  }

  async #writer(): Promise<void> {
    while (this.#running) {
      const id = nextId++;
      this.attempts.write++;
      try {
        const rows = await this.pool.query(
          "rw",
          "INSERT INTO lab_writes (id, phase) VALUES ($1, $2) RETURNING inet_server_port() AS port",
          [id, this.phase],
        );
        this.acks.push({ id, port: rows[0].port, at: performance.now() });
        await sleep(3);
      } catch (err) {
        this.#fail("write", err);
        await sleep(10);
      }
    }
  }

  async #txWriter(): Promise<void> {
    while (this.#running) {
      const tx = nextTx++;
      this.attempts.tx++;
      try {
        const port = await this.pool.transaction("tx", async (db) => {
          await db.query("INSERT INTO lab_tx (tx, part, phase) VALUES ($1, 1, $2)", [
            tx,
            this.phase,
          ]);
          const rows = await db.query(
            "INSERT INTO lab_tx (tx, part, phase) VALUES ($1, 2, $2) RETURNING inet_server_port() AS port",
            [tx, this.phase],
          );
          return rows[0].port as number;
        });
        this.txAcks.push({ id: tx, port, at: performance.now() });
        await sleep(3);
      } catch (err) {
        this.#fail("tx", err);
        await sleep(10);
      }
    }
  }

  async #reader(): Promise<void> {
    while (this.#running) {
      this.attempts.read++;
      const before = this.#primaryPorts();
      try {
        const rows = await this.pool.query(
          "ro",
          "SELECT pg_is_in_recovery() AS rec, inet_server_port() AS port",
        );
        const { rec, port } = rows[0] as { rec: boolean; port: number };
        this.reads.push({
          port,
          rec,
          at: performance.now(),
          knownAtSend: before.has(port),
          knownAtAnswer: this.#primaryPorts().has(port),
        });
        await sleep(3);
      } catch (err) {
        this.#fail("read", err);
        await sleep(10);
      }
    }
  }

  async #preferReader(): Promise<void> {
    while (this.#running) {
      this.attempts.pref++;
      try {
        const rows = await this.pool.query(
          "pref",
          "SELECT pg_is_in_recovery() AS rec, inet_server_port() AS port",
        );
        this.prefReads.push({ port: rows[0].port, rec: rows[0].rec, at: performance.now() });
        await sleep(3);
      } catch (err) {
        this.#fail("pref", err);
        await sleep(10);
      }
    }
  }

  /**
   * Reads of the replica group sent to a server the pool already knew to be the leader: its
   * port was primary in the pool's books when the read was sent, and either a primary answered
   * or the pool still had it as primary when the answer came. (A read in flight while its
   * server is promoted may be answered there: the pool did not know yet.)
   */
  violations(): Read[] {
    return this.reads.filter((r) => r.knownAtSend && (!r.rec || r.knownAtAnswer));
  }

  /**
   * When the first autocommit write, transaction or replica-group read (answered by a server in
   * recovery) on `port` after `after` was acknowledged, if any.
   */
  firstOn(kind: "write" | "tx" | "read", port: number, after = -Infinity): number | undefined {
    const list: ReadonlyArray<{ port: number; at: number; rec?: boolean }> = kind === "write"
      ? this.acks
      : kind === "tx"
      ? this.txAcks
      : this.reads.filter((r) => r.rec);
    return list.find((e) => e.port === port && e.at > after)?.at;
  }
}

/** A pool over all three nodes in `order` (the leader not first), groups of every role. */
function makePool(order: PatroniNode[], app: string): Pool {
  return new Pool({
    db: theLab().endpoints(order),
    groups: {
      rw: { connection_count: CONNECTIONS.rw, role: "primary", autocommit: true },
      tx: { connection_count: CONNECTIONS.tx, role: "primary", autocommit: false },
      ro: { connection_count: CONNECTIONS.ro, role: "replica" },
      pref: { connection_count: CONNECTIONS.pref, role: "prefer-replica" },
    },
    application_name: app,
  });
}

/** A pool (application_name `app`) with its workload running, shut down at most once. */
class PoolRun {
  readonly pool: Pool;
  readonly w: Workload;
  #shutdown: Promise<void> | undefined;

  constructor(readonly app: string, phase: string, order: PatroniNode[]) {
    this.pool = makePool(order, app);
    this.w = new Workload(this.pool, phase);
    this.w.start();
  }

  /** Stops the workload, then closes the pool; later calls return the first call's promise. */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.w.stop().then(() => this.pool.close());
    return this.#shutdown;
  }
}

/**
 * The crash phase's pool and workload, left running for the rejoin phase, with the node that
 * crashed. Unset when the crash phase failed before its crash.
 */
let handoff: { run: PoolRun; crashed: PatroniNode } | undefined;

/**
 * Runs `body`, then `cleanup` once, whatever happened. A cleanup error fails the test only when
 * the body passed: after a failure it is logged, so it cannot replace the error that says what
 * went wrong.
 */
async function withCleanup(
  body: () => Promise<void>,
  cleanup: () => Promise<void>,
): Promise<void> {
  let failed = false;
  try {
    await body();
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    await cleanup().catch((err) => {
      if (!failed) throw err;
      console.error(`patroni_test: cleanup after the failure failed too: ${err?.stack ?? err}`);
    });
  }
}

/**
 * Runs every check, even after one failed, and throws the first failure (with the others'
 * messages when more than one failed).
 */
async function allChecks(checks: Array<() => void | Promise<void>>): Promise<void> {
  const errors: Error[] = [];
  for (const check of checks) {
    try {
      await check();
    } catch (err) {
      errors.push(err instanceof Error ? err : new Error(String(err)));
    }
  }
  if (errors.length === 1) throw errors[0];
  if (errors.length > 1) {
    throw new AggregateError(
      errors,
      `${errors.length} checks failed:\n${errors.map((e) => e.message).join("\n---\n")}`,
    );
  }
}

/** Waits until the workload has written and read on the current topology. */
async function warmUp(w: Workload, leader: PatroniNode): Promise<void> {
  await waitFor(
    () =>
      w.acks.filter((a) => a.port === leader.port).length >= 100 &&
      w.txAcks.filter((a) => a.port === leader.port).length >= 20 &&
      w.reads.length >= 50 && w.prefReads.length >= 10,
    { timeoutMs: 30_000, message: `the ${w.phase} workload to warm up on ${leader.name}` },
  ).catch((err) => {
    throw new Error(`${err.message}: ${summary(w)}`, { cause: err });
  });
}

/** The workload's counts and failures in one line, for failure messages. */
function summary(w: Workload): string {
  return `writes ${w.acks.length}/${w.attempts.write} acked, tx ${w.txAcks.length}/${w.attempts.tx} acked, ` +
    `reads ${w.reads.length}/${w.attempts.read}, prefer-replica reads ${w.prefReads.length}/${w.attempts.pref}; ` +
    `failures: ${w.failureList()}`;
}

/** Prints a figures line and keeps it for the summary the after() hook prints. */
function figure(line: string): void {
  console.log(line);
  figures.push(line);
}

/** Waits for the workload's first autocommit write and transaction on `node` after `since`. */
async function firstWrites(
  w: Workload,
  node: PatroniNode,
  since: number,
): Promise<{ write: number | undefined; tx: number | undefined }> {
  await waitFor(
    () =>
      w.firstOn("write", node.port, since) !== undefined &&
      w.firstOn("tx", node.port, since) !== undefined,
    { timeoutMs: FIGURE_TIMEOUT_MS, message: `writes on ${node.name}` },
  ).catch(() => {}); // the assertions report what was (not) seen
  return { write: w.firstOn("write", node.port, since), tx: w.firstOn("tx", node.port, since) };
}

/**
 * Asserts that the first autocommit write and the first transaction on the new leader `node`
 * (times from {@link firstWrites}) came within RESUME_LIMIT_MS of Patroni's report.
 */
function assertResumed(
  w: Workload,
  node: PatroniNode,
  first: { write: number | undefined; tx: number | undefined },
  reportedAt: number,
): void {
  for (
    const [what, at] of [["autocommit write", first.write], ["transaction", first.tx]] as const
  ) {
    assert.ok(
      at !== undefined,
      `no ${what} on ${node.name} within ${FIGURE_TIMEOUT_MS} ms: ${summary(w)}`,
    );
    assert.ok(
      at - reportedAt <= RESUME_LIMIT_MS,
      `first ${what} on ${node.name} ${
        ms(at - reportedAt)
      } ms after Patroni's report (limit ${RESUME_LIMIT_MS} ms)`,
    );
  }
}

/**
 * Waits for the replica group's first read answered by `node` (in recovery) after `since`;
 * resolves to how long after `streamingAt` that was, or undefined when none came within
 * FIGURE_TIMEOUT_MS. Negative when the node served reads before the poll that saw it stream.
 */
async function readBack(
  w: Workload,
  node: PatroniNode,
  since: number,
  streamingAt: number,
): Promise<number | undefined> {
  const first = () => w.firstOn("read", node.port, since);
  await waitFor(() => first() !== undefined, { timeoutMs: FIGURE_TIMEOUT_MS }).catch(() => {});
  const at = first();
  return at === undefined ? undefined : at - streamingAt;
}

/** A {@link readBack} figure for the line, "1234 ms" or "none within 30000 ms". */
function showReadBack(after: number | undefined): string {
  return after === undefined ? `none within ${FIGURE_TIMEOUT_MS} ms` : `${ms(after)} ms`;
}

/** Asserts a {@link readBack} figure of `pool` against REJOIN_LIMIT_MS. */
function assertReadBack(
  pool: string,
  w: Workload,
  node: PatroniNode,
  after: number | undefined,
): void {
  assert.ok(
    after !== undefined && after <= REJOIN_LIMIT_MS,
    `${pool}: the replica group's first read from ${node.name} came ${
      showReadBack(after)
    } after it streamed (limit ${REJOIN_LIMIT_MS} ms): ${summary(w)}`,
  );
}

/**
 * Checks the workload against the current leader, running or stopped: every commit it had
 * acknowledged when the check began is there, no transaction of any phase is half applied, no
 * replica-group read went to a known leader. Prints and keeps the figures line (`label`) first.
 */
async function checkData(w: Workload, label: string): Promise<void> {
  // Copies first: a commit acknowledged before the queries below start is visible to them, one
  // acknowledged while they run may not be yet.
  const acks = [...w.acks];
  const txAcks = [...w.txAcks];
  const lab = theLab();
  const { leader } = await lab.waitHealthy();
  const present = new Set(
    (await lab.query(leader, "SELECT id FROM lab_writes WHERE phase = $1", [w.phase])).map((r) =>
      Number(r.id)
    ),
  );
  const lost = acks.filter((a) => !present.has(a.id)).map((a) => a.id);
  const parts = new Map<number, number>();
  for (
    const r of await lab.query(
      leader,
      "SELECT tx, count(*)::int AS n FROM lab_tx WHERE phase = $1 GROUP BY tx",
      [w.phase],
    )
  ) {
    parts.set(Number(r.tx), r.n);
  }
  const txLost = txAcks.filter((a) => parts.get(a.id) !== 2).map((a) => a.id);
  // Every phase's rows: a transaction's two rows commit together or not at all, so one seen
  // alone is half applied whether or not its transaction is still running.
  const half = await lab.query(
    leader,
    "SELECT tx, count(*)::int AS n FROM lab_tx GROUP BY tx HAVING count(*) <> 2",
  );
  const violations = w.violations();

  figure(
    `${label}: writes acknowledged ${acks.length}, lost ${lost.length}, failed ${
      w.failed("write")
    }; ` +
      `transactions acknowledged ${txAcks.length}, lost ${txLost.length}, failed ${
        w.failed("tx")
      }, ` +
      `half applied ${half.length}; replica reads ${w.reads.length} (known-leader violations ${violations.length}), ` +
      `failed ${w.failed("read")}; prefer-replica reads ${w.prefReads.length}, failed ${
        w.failed("pref")
      }; ` +
      `failures: ${w.failureList()}`,
  );

  assert.deepEqual(lost, [], `${label}: acknowledged autocommit writes missing on ${leader.name}`);
  assert.deepEqual(
    txLost,
    [],
    `${label}: acknowledged transactions not (fully) on ${leader.name}`,
  );
  assert.deepEqual(half, [], `${label}: transactions half applied`);
  assert.deepEqual(
    violations.slice(0, 10),
    [],
    `${label}: ${violations.length} replica-group read(s) sent to a server the pool knew to be the leader`,
  );
}

/** Shuts the run down and checks that no connection of its pool is left on any node. */
async function checkClosed(run: PoolRun): Promise<void> {
  await run.shutdown();
  let left: Record<string, number> = {};
  const closed = await waitFor(async () => {
    left = await theLab().sessions(run.app);
    return Object.values(left).every((n) => n === 0);
  }, { timeoutMs: 3_000 }).catch(() => false);
  assert.ok(closed, `${run.app}: pool connections left after close(): ${JSON.stringify(left)}`);
}

/**
 * All nodes with the leader not first and the node that will take over last: [the asynchronous
 * replica, the leader, the synchronous standby], so that anything the pool does endpoint by
 * endpoint meets the old leader before the new one.
 */
function leaderNotFirst(
  leader: PatroniNode,
  sync: PatroniNode,
  replicas: PatroniNode[],
): PatroniNode[] {
  return [...replicas.filter((n) => n !== sync), leader, sync];
}

/** Waits (without failing) until the workload has written `n` rows on `node`. */
async function writesOn(w: Workload, node: PatroniNode, n: number): Promise<void> {
  await waitFor(() => w.acks.filter((a) => a.port === node.port).length >= n, {
    timeoutMs: 30_000,
  }).catch(() => {}); // the data checks that follow report a workload that stalled
}

describe(`Patroni HA lab (${RUNTIME})`, { skip: SKIP }, () => {
  it("planned switchover: writes resume on the new leader within 1 s of Patroni reporting it", async () => {
    const lab = theLab();
    const { leader, sync, replicas } = await lab.waitHealthy();
    const run = new PoolRun(
      "patroni_switchover",
      "switchover",
      leaderNotFirst(leader, sync, replicas),
    );
    const w = run.w;
    await withCleanup(async () => {
      await warmUp(w, leader);
      const switching = lab.switchover(sync); // in synchronous mode only the sync standby qualifies
      switching.catch(() => {});
      const report = await lab.waitForNewLeader(leader);
      // The old leader comes back as a replica: when it streams, and when replica reads reach it.
      const demoted = lab.waitStreaming(leader, { timeoutMs: 60_000 });
      demoted.catch(() => {});
      const answer = await switching;
      assert.equal(
        report.node,
        sync,
        `Patroni promoted ${report.node.name}, asked for ${sync.name}`,
      );
      const first = await firstWrites(w, sync, -Infinity);
      const show = (t: number | undefined) =>
        t === undefined ? "none" : `${ms(t - report.reportedAt)} ms`;
      figure(
        `switchover ${leader.name} -> ${sync.name} (${answer.answer}): first autocommit write ` +
          `${show(first.write)}, first transaction ${show(first.tx)} ` +
          `after Patroni reported the new leader (leader key seen ${
            ms(report.reportedAt - report.lockAt)
          } ms before that; report poll ${ms(report.pollMs)} ms)`,
      );
      await lab.waitHealthy();
      const demotedAt = await demoted;
      const readFromDemoted = await readBack(w, leader, report.reportedAt, demotedAt);
      figure(
        `switchover: ${leader.name} streaming as a replica ${
          ms(demotedAt - report.reportedAt)
        } ms after the report; first replica-group read from it ${
          showReadBack(readFromDemoted)
        } after it streamed`,
      );
      // Let the workload run on the new topology a while before checking it.
      await writesOn(w, sync, 100);
      await w.stop();
      await allChecks([
        () => checkData(w, "switchover"),
        () => checkClosed(run),
        () => assertResumed(w, sync, first, report.reportedAt),
        () => assertReadBack("switchover", w, leader, readFromDemoted),
      ]);
    }, () => run.shutdown());
  });

  it("leader crash (kill -9 of Patroni and postmaster): writes resume within 1 s of Patroni's report", async () => {
    const lab = theLab();
    const { leader, sync, replicas } = await lab.waitHealthy();
    // In synchronous mode the synchronous standby is the one Patroni promotes.
    const run = new PoolRun("patroni_crash", "crash", leaderNotFirst(leader, sync, replicas));
    const w = run.w;
    let crashed: PatroniNode | undefined;
    await withCleanup(async () => {
      await warmUp(w, leader);
      const crash = await lab.crashLeader();
      crashed = crash.node;
      assert.equal(crash.node, leader);
      const report = await lab.waitForNewLeader(crash.node);
      const first = await firstWrites(w, report.node, crash.at);
      const show = (t: number | undefined, from: number) =>
        t === undefined ? "none" : `${ms(t - from)} ms`;
      figure(
        `crash of ${crash.node.name}, ${report.node.name} promoted: Patroni reported it ` +
          `${ms(report.reportedAt - crash.at)} ms after the kill (leader key seen ${
            ms(report.reportedAt - report.lockAt)
          } ms before that; report poll ${ms(report.pollMs)} ms); first autocommit write ` +
          `${show(first.write, report.reportedAt)} after the report (${
            show(first.write, crash.at)
          } after the kill), first transaction ${show(first.tx, report.reportedAt)} after the ` +
          `report (${show(first.tx, crash.at)} after the kill)`,
      );
      await lab.waitHealthy(); // the new leader and its remaining replica, streaming
      await writesOn(w, report.node, 100);
      // The data as it stands, the workload still running: the pool goes on into the rejoin
      // phase, which checks it again at the end and closes it.
      await allChecks([
        () => checkData(w, "crash (pool still running, carried on into the rejoin phase)"),
        () => assertResumed(w, report.node, first, report.reportedAt),
      ]);
    }, async () => {
      // A pool that saw the leader crash goes on into the rejoin phase even when a check here
      // failed: what it does when the node returns is that phase's subject.
      if (crashed) handoff = { run, crashed };
      else await run.shutdown();
    });
  });

  it("the crashed node rejoins as a replica (pg_rewind): replica reads reach it within 10 s of it streaming", async () => {
    const lab = theLab();
    const carried = handoff;
    handoff = undefined;
    const runs: PoolRun[] = carried ? [carried.run] : [];
    await withCleanup(async () => {
      const crashed = carried?.crashed ?? lab.nodes.find((n) => !lab.isRunning(n));
      assert.ok(crashed, "the crash phase left no crashed node to rejoin");
      if (!carried) {
        figure(
          "rejoin: the crash phase handed over no pool (it failed before its crash): only a " +
            "fresh pool started during the outage is checked",
        );
      }
      const { leader, replicas } = await lab.waitHealthy();
      // The crashed node is down when this pool starts: it learns of it coming back by itself.
      const fresh = new PoolRun("patroni_rejoin", "rejoin", [crashed, leader, ...replicas]);
      runs.push(fresh);
      await warmUp(fresh.w, leader);
      const logFrom = lab.logSize(crashed);
      const restartedAt = performance.now();
      lab.startNode(crashed);
      const streamingAt = await lab.waitStreaming(crashed, { timeoutMs: 90_000 });
      const back = await Promise.all(
        runs.map((r) => readBack(r.w, crashed, restartedAt, streamingAt)),
      );
      const names = runs.map((r) =>
        r === fresh ? "fresh pool (started during the outage)" : "carried pool (saw it crash)"
      );
      figure(
        `rejoin of ${crashed.name}: streaming ${ms(streamingAt - restartedAt)} ms after its ` +
          `restart (pg_rewind ${lab.rewound(crashed, logFrom) ? "ran" : "not needed"}); first ` +
          `replica-group read from it after it was streaming: ${
            runs.map((_, i) => `${names[i]} ${showReadBack(back[i])}`).join(", ")
          }`,
      );
      // Patroni's member record catches up within a loop or two of the node streaming.
      let status = await lab.status();
      await waitFor(async () => {
        status = await lab.status();
        const m = status.members.find((m) => m.name === crashed.name);
        return m && m.role !== "leader" && m.state === "running";
      }, { timeoutMs: 15_000 }).catch(() => {});
      const member = status.members.find((m) => m.name === crashed.name);
      assert.ok(
        member && member.role !== "leader" && member.state === "running",
        JSON.stringify(status),
      );
      await Promise.all(runs.map((r) => r.w.stop()));
      await allChecks(runs.flatMap((r, i) => [
        () => assertReadBack(names[i], r.w, crashed, back[i]),
        () => checkData(r.w, r === fresh ? "rejoin (fresh pool)" : "crash + rejoin (carried pool)"),
        () => checkClosed(r),
      ]));
    }, async () => {
      await Promise.all(runs.map((r) => r.shutdown()));
    });
  });
});

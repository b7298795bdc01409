// The pool in front of a Patroni HA cluster (tests/harness/patroni.ts: etcd + three Patroni
// nodes of PostgreSQL, synchronous mode, pg_rewind), under a steady concurrent workload:
// a planned switchover, a crash of the leader (kill -9 of its Patroni and its postmaster), and
// the crashed node rejoining as a replica. Each phase has its own pool (all three nodes, the
// leader not first) and ends with the same checks: every acknowledged commit on the final
// leader, no transaction half applied, no replica-group read sent to a server the pool already
// knew to be the leader, no connection of the pool left after close().
//
// Runs in the pass against Debian's PostgreSQL (PGDBPOOL_PG_BIN); Patroni needs pg_rewind and
// pg_basebackup, which the embedded PostgreSQL package does not ship.
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

const SKIP = process.env.PGDBPOOL_PG_BIN
  ? false
  : "the Patroni lab runs in the Debian PostgreSQL pass (PGDBPOOL_PG_BIN=/usr/lib/postgresql/15/bin)";
if (SKIP) console.log(`patroni_test: skipped: ${SKIP}`);

let lab: PatroniLab | undefined;
const figures: string[] = [];

before(async () => {
  if (SKIP) return;
  const missing = patroniMissing();
  if (missing) throw new Error(missing);
  const t0 = performance.now();
  lab = await startPatroni();
  const { leader } = await lab.waitHealthy();
  const own = "OWNER TO pool_user";
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
}, { timeout: 180_000 });

after(async () => {
  if (figures.length > 0) console.log(`\npatroni figures (${RUNTIME}):\n  ${figures.join("\n  ")}`);
  await lab?.close();
}, { timeout: 60_000 });

const ms = (n: number) => Math.round(n);

function errorKind(err: unknown): string {
  const e = err as { name?: string; code?: string; outcome?: string; message?: string };
  const parts = [e?.name ?? typeof err];
  if (e?.code) parts.push(e.code);
  if (e?.outcome) parts.push(e.outcome);
  return parts.join(":");
}

interface WriteAck {
  id: number;
  port: number;
  at: number;
}
interface TxAck {
  tx: number;
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
 * The steady workload of one phase: autocommit writers and transactional writers on the
 * primary groups, readers on the replica and prefer-replica groups. Each loop paces itself a
 * little (the machine is small and shared) and keeps going through errors.
 */
class Workload {
  readonly acks: WriteAck[] = [];
  readonly txAcks: TxAck[] = [];
  readonly reads: Read[] = [];
  readonly prefReads: Array<{ port: number; rec: boolean; at: number }> = [];
  readonly failures = new Map<string, number>();
  attempts = { write: 0, tx: 0, read: 0, pref: 0 };
  #running = true;
  #loops: Promise<void>[] = [];

  constructor(readonly pool: Pool, readonly phase: string) {}

  start(): void {
    const loops = [
      ...Array.from({ length: LOOPS.rw }, () => this.#writer()),
      ...Array.from({ length: LOOPS.tx }, () => this.#txWriter()),
      ...Array.from({ length: LOOPS.ro }, () => this.#reader()),
      ...Array.from({ length: LOOPS.pref }, () => this.#preferReader()),
    ];
    this.#loops = loops;
  }

  async stop(): Promise<void> {
    this.#running = false;
    await Promise.all(this.#loops);
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
        this.txAcks.push({ tx, port, at: performance.now() });
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

  firstAckOn(port: number, after = -Infinity): number | undefined {
    return this.acks.find((a) => a.port === port && a.at > after)?.at;
  }

  firstTxAckOn(port: number, after = -Infinity): number | undefined {
    return this.txAcks.find((a) => a.port === port && a.at > after)?.at;
  }
}

/** A pool over all three nodes in `order` (the leader not first), groups of every role. */
function makePool(order: PatroniNode[], app: string): Pool {
  return new Pool({
    db: lab!.endpoints(order),
    groups: {
      rw: { connection_count: CONNECTIONS.rw, role: "primary", autocommit: true },
      tx: { connection_count: CONNECTIONS.tx, role: "primary", autocommit: false },
      ro: { connection_count: CONNECTIONS.ro, role: "replica" },
      pref: { connection_count: CONNECTIONS.pref, role: "prefer-replica" },
    },
    application_name: app,
  });
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

function summary(w: Workload): string {
  const fails = [...w.failures].map(([k, v]) => `${k} x${v}`).join(", ") || "none";
  return `writes ${w.acks.length}/${w.attempts.write} acked, tx ${w.txAcks.length}/${w.attempts.tx} acked, ` +
    `reads ${w.reads.length}/${w.attempts.read}, prefer-replica reads ${w.prefReads.length}/${w.attempts.pref}; ` +
    `failures: ${fails}`;
}

/** Waits for the workload's first autocommit and transactional write on `node`, after `since`. */
async function firstWrites(
  w: Workload,
  node: PatroniNode,
  since: number,
): Promise<{ write: number | undefined; tx: number | undefined }> {
  await waitFor(
    () =>
      w.firstAckOn(node.port, since) !== undefined &&
      w.firstTxAckOn(node.port, since) !== undefined,
    { timeoutMs: FIGURE_TIMEOUT_MS, message: `writes on ${node.name}` },
  ).catch(() => {}); // the assertions below report what was (not) seen
  return { write: w.firstAckOn(node.port, since), tx: w.firstTxAckOn(node.port, since) };
}

interface PhaseResult {
  lost: number[];
  txLost: number[];
  halfApplied: number;
}

/**
 * Stops the workload and checks it against the final leader: every acknowledged commit is
 * there, no transaction of any phase is half applied, no replica-group read went to a known
 * leader. Then closes the pool and checks that no connection of it is left on any node.
 */
async function finishPhase(w: Workload, app: string): Promise<PhaseResult> {
  await w.stop();
  const { leader } = await lab!.waitHealthy();
  const present = new Set(
    (await lab!.query(leader, "SELECT id FROM lab_writes WHERE phase = $1", [w.phase])).map((r) =>
      Number(r.id)
    ),
  );
  const lost = w.acks.filter((a) => !present.has(a.id)).map((a) => a.id);
  const parts = new Map<number, number>();
  for (
    const r of await lab!.query(
      leader,
      "SELECT tx, count(*)::int AS n FROM lab_tx WHERE phase = $1 GROUP BY tx",
      [w.phase],
    )
  ) {
    parts.set(Number(r.tx), r.n);
  }
  const txLost = w.txAcks.filter((a) => parts.get(a.tx) !== 2).map((a) => a.tx);
  const half = await lab!.query(
    leader,
    "SELECT tx, count(*)::int AS n FROM lab_tx GROUP BY tx HAVING count(*) <> 2",
  );
  const violations = w.violations();

  await w.pool.close();
  let left: Record<string, number> = {};
  const closed = await waitFor(async () => {
    left = await lab!.sessions(app);
    return Object.values(left).every((n) => n === 0);
  }, { timeoutMs: 3_000 }).catch(() => false);

  const line =
    `${w.phase}: writes acknowledged ${w.acks.length}, lost ${lost.length}, failed ${
      w.failed("write")
    }; ` +
    `transactions acknowledged ${w.txAcks.length}, lost ${txLost.length}, failed ${
      w.failed("tx")
    }, ` +
    `half applied ${half.length}; replica reads ${w.reads.length} (known-leader violations ${violations.length}), ` +
    `failed ${w.failed("read")}; prefer-replica reads ${w.prefReads.length}, failed ${
      w.failed("pref")
    }; ` +
    `failures: ${[...w.failures].map(([k, v]) => `${k} x${v}`).join(", ") || "none"}`;
  console.log(line);
  figures.push(line);

  assert.deepEqual(
    lost,
    [],
    `${w.phase}: acknowledged autocommit writes missing on ${leader.name}`,
  );
  assert.deepEqual(
    txLost,
    [],
    `${w.phase}: acknowledged transactions not (fully) on ${leader.name}`,
  );
  assert.deepEqual(half, [], `${w.phase}: transactions half applied`);
  assert.deepEqual(
    violations.slice(0, 10),
    [],
    `${w.phase}: ${violations.length} replica-group read(s) sent to a server the pool knew to be the leader`,
  );
  assert.ok(closed, `${w.phase}: pool connections left after close(): ${JSON.stringify(left)}`);
  return { lost, txLost, halfApplied: half.length };
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

describe(`Patroni HA lab (${RUNTIME})`, { skip: SKIP }, () => {
  it("planned switchover: writes resume on the new leader within 1 s of Patroni reporting it", async () => {
    const { leader, sync, replicas } = await lab!.waitHealthy();
    const app = "patroni_switchover";
    const pool = makePool(leaderNotFirst(leader, sync, replicas), app);
    const w = new Workload(pool, "switchover");
    w.start();
    try {
      await warmUp(w, leader);
      const switching = lab!.switchover(sync); // in synchronous mode only the sync standby qualifies
      switching.catch(() => {});
      const report = await lab!.waitForNewLeader(leader);
      // The old leader comes back as a replica: when it streams, and when replica reads reach it.
      const demoted = lab!.waitStreaming(leader, { timeoutMs: 60_000 });
      demoted.catch(() => {});
      const answer = await switching;
      assert.equal(
        report.node,
        sync,
        `Patroni promoted ${report.node.name}, asked for ${sync.name}`,
      );
      const first = await firstWrites(w, sync, -Infinity);
      const write = first.write === undefined ? undefined : first.write - report.reportedAt;
      const tx = first.tx === undefined ? undefined : first.tx - report.reportedAt;
      const line =
        `switchover ${leader.name} -> ${sync.name} (${answer.answer}): first autocommit write ` +
        `${write === undefined ? "none" : ms(write)} ms, first transaction ${
          tx === undefined ? "none" : ms(tx)
        } ms ` +
        `after Patroni reported the new leader (leader key seen ${
          ms(report.reportedAt - report.lockAt)
        } ms before that; report poll ${ms(report.pollMs)} ms)`;
      console.log(line);
      figures.push(line);
      // The old leader rejoins as a replica; let the workload run on the new topology a while.
      await lab!.waitHealthy();
      const demotedAt = await demoted;
      const readsDemoted = (r: Read) => r.port === leader.port && r.rec && r.at > report.reportedAt;
      await waitFor(() => w.reads.some(readsDemoted), { timeoutMs: FIGURE_TIMEOUT_MS }).catch(
        () => {},
      );
      const demotedRead = w.reads.find(readsDemoted)?.at;
      const demotedLine =
        `switchover: ${leader.name} streaming as a replica ${
          ms(demotedAt - report.reportedAt)
        } ms ` +
        `after the report; first replica-group read from it ${
          demotedRead === undefined
            ? `none within ${FIGURE_TIMEOUT_MS} ms`
            : `${ms(demotedRead - demotedAt)} ms`
        } after it streamed (figure only)`;
      console.log(demotedLine);
      figures.push(demotedLine);
      await waitFor(() => w.acks.filter((a) => a.port === sync.port).length >= 100, {
        timeoutMs: 30_000,
        message: "writes on the new leader",
      }).catch(() => {});
      await finishPhase(w, app);
      assert.ok(
        write !== undefined,
        `no autocommit write on ${sync.name} within ${FIGURE_TIMEOUT_MS} ms: ${summary(w)}`,
      );
      assert.ok(
        tx !== undefined,
        `no transaction on ${sync.name} within ${FIGURE_TIMEOUT_MS} ms: ${summary(w)}`,
      );
      assert.ok(
        write <= RESUME_LIMIT_MS,
        `first autocommit write ${ms(write)} ms after Patroni's report (limit ${RESUME_LIMIT_MS})`,
      );
      assert.ok(
        tx <= RESUME_LIMIT_MS,
        `first transaction ${ms(tx)} ms after Patroni's report (limit ${RESUME_LIMIT_MS})`,
      );
    } finally {
      await w.stop();
      await pool.close();
    }
  });

  it("leader crash (kill -9 of Patroni and postmaster): writes resume within 1 s of Patroni's report", async () => {
    const { leader, sync, replicas } = await lab!.waitHealthy();
    const app = "patroni_crash";
    // In synchronous mode the synchronous standby is the one Patroni promotes.
    const pool = makePool(leaderNotFirst(leader, sync, replicas), app);
    const w = new Workload(pool, "crash");
    w.start();
    try {
      await warmUp(w, leader);
      const crash = await lab!.crashLeader();
      assert.equal(crash.node, leader);
      const report = await lab!.waitForNewLeader(crash.node);
      const first = await firstWrites(w, report.node, crash.at);
      const fromReport = (t: number | undefined) =>
        t === undefined ? undefined : t - report.reportedAt;
      const fromCrash = (t: number | undefined) => t === undefined ? undefined : t - crash.at;
      const show = (n: number | undefined) => n === undefined ? "none" : `${ms(n)} ms`;
      const line =
        `crash of ${crash.node.name}, ${report.node.name} promoted: Patroni reported it ` +
        `${ms(report.reportedAt - crash.at)} ms after the kill (leader key seen ${
          ms(report.reportedAt - report.lockAt)
        } ms before that; report poll ${ms(report.pollMs)} ms); first autocommit write ` +
        `${show(fromReport(first.write))} after the report (${
          show(fromCrash(first.write))
        } after the kill), ` +
        `first transaction ${show(fromReport(first.tx))} after the report (${
          show(fromCrash(first.tx))
        } after the kill)`;
      console.log(line);
      figures.push(line);
      await lab!.waitHealthy(); // the new leader and its remaining replica, streaming
      await waitFor(() => w.acks.filter((a) => a.port === report.node.port).length >= 100, {
        timeoutMs: 30_000,
        message: "writes on the new leader",
      }).catch(() => {});
      await finishPhase(w, app);
      const write = fromReport(first.write);
      const tx = fromReport(first.tx);
      assert.ok(
        write !== undefined,
        `no autocommit write on ${report.node.name} within ${FIGURE_TIMEOUT_MS} ms: ${summary(w)}`,
      );
      assert.ok(
        tx !== undefined,
        `no transaction on ${report.node.name} within ${FIGURE_TIMEOUT_MS} ms: ${summary(w)}`,
      );
      assert.ok(
        write <= RESUME_LIMIT_MS,
        `first autocommit write ${ms(write)} ms after Patroni's report (limit ${RESUME_LIMIT_MS})`,
      );
      assert.ok(
        tx <= RESUME_LIMIT_MS,
        `first transaction ${ms(tx)} ms after Patroni's report (limit ${RESUME_LIMIT_MS})`,
      );
    } finally {
      await w.stop();
      await pool.close();
    }
  });

  it("the crashed node rejoins as a replica (pg_rewind): replica reads reach it within 10 s of it streaming", async () => {
    const crashed = lab!.nodes.find((n) => !lab!.isRunning(n));
    assert.ok(crashed, "the crash phase left no crashed node to rejoin");
    const { leader, replicas } = await lab!.waitHealthy();
    const app = "patroni_rejoin";
    // The crashed node is down when the pool starts: it learns of it coming back by itself.
    const pool = makePool([crashed, leader, ...replicas], app);
    const w = new Workload(pool, "rejoin");
    w.start();
    try {
      await warmUp(w, leader);
      const logFrom = lab!.logSize(crashed);
      const restartedAt = performance.now();
      lab!.startNode(crashed);
      const streamingAt = await lab!.waitStreaming(crashed, { timeoutMs: 90_000 });
      await waitFor(() => w.reads.some((r) => r.port === crashed.port && r.at > restartedAt), {
        timeoutMs: FIGURE_TIMEOUT_MS,
        message: `a replica-group read answered by ${crashed.name}`,
      }).catch(() => {});
      const firstRead = w.reads.find((r) => r.port === crashed.port && r.at > restartedAt)?.at;
      const after = firstRead === undefined ? undefined : firstRead - streamingAt;
      const rewound = lab!.rewound(crashed, logFrom);
      const line =
        `rejoin of ${crashed.name}: streaming ${
          ms(streamingAt - restartedAt)
        } ms after its restart ` +
        `(pg_rewind ${rewound ? "ran" : "not needed"}); first replica-group read from it ` +
        `${
          after === undefined ? `none within ${FIGURE_TIMEOUT_MS} ms` : `${ms(after)} ms`
        } after it was streaming`;
      console.log(line);
      figures.push(line);
      // Patroni's member record catches up within a loop or two of the node streaming.
      let status = await lab!.status();
      await waitFor(async () => {
        status = await lab!.status();
        const m = status.members.find((m) => m.name === crashed.name);
        return m && m.role !== "leader" && m.state === "running";
      }, { timeoutMs: 15_000 }).catch(() => {});
      const member = status.members.find((m) => m.name === crashed.name);
      assert.ok(
        member && member.role !== "leader" && member.state === "running",
        JSON.stringify(status),
      );
      await finishPhase(w, app);
      assert.ok(
        after !== undefined,
        `the replica group never read from ${crashed.name}: ${summary(w)}`,
      );
      assert.ok(
        after <= REJOIN_LIMIT_MS,
        `first read from ${crashed.name} ${
          ms(after)
        } ms after it streamed (limit ${REJOIN_LIMIT_MS})`,
      );
    } finally {
      await w.stop();
      await pool.close();
    }
  });
});

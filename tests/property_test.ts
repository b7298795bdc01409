// Model-free property test: random programs of checkouts (handlers and `pool.acquire()`),
// statements, commits, rollbacks, releases, aborts, timeouts, one-shots, blocks opened through
// db.sql (`` db.sql`BEGIN` ``, which the pool's own tracking cannot see) and close, interleaved with faults (backend kills, a
// blackholed primary, connection resets, a role connection limit), run against ONE pool on a real
// primary + replica. Nothing models what the pool should answer; after every step, at barriers
// and at the end, invariants that must hold whatever happened are checked:
//
// - every operation settles within OP_DEADLINE_MS (a hang is a failure), and `pool.acquire()`
//   within its timeout plus ACQUIRE_SLACK_MS (its wait for a permit, for a routable server and
//   for the proof of a stale connection are all bounded by it);
// - stats: busy <= size, idle <= open <= size, waiting >= 0; busy == 0 once nothing is held;
// - server: after a barrier no pool session is idle in transaction, and the pool's sessions
//   (by application_name) are no more than the groups' `open`; after close() there are none;
// - a checkout never moves to another session after its first statement (every statement and
//   every stored row of one checkout carries one backend pid), unless the caller acknowledged
//   a lost session with rollback();
// - after a lost session, later statements of the checkout are refused (not-executed);
// - use after release rejects with the documented TypeError; after close(), with PoolClosedError;
// - acknowledged writes and commits are stored; writes rejected with outcome "not-executed" or
//   any other error than SessionLostError(outcome "unknown") are not.
//
// - a COMMIT after a failed statement of its transaction never succeeds;
// - no error escapes as an unhandled rejection; errors are of the documented kinds.
//
// Deterministic in CI: PGDBPOOL_FC_SEED (default below), PGDBPOOL_FC_RUNS (default 25).
// PGDBPOOL_FC_TIME_LIMIT_MS bounds the whole fast-check run including shrinking;
// PGDBPOOL_FC_AVOID lists known open defects the programs steer around (see below);
// PGDBPOOL_FC_VERBOSE=1 prints every program's trace. Counterexamples found so far are
// deterministic regression tests at the end of this file ("property regressions").
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import fc from "fast-check";
import { type PgCluster, startCluster, testDriver } from "./harness/cluster.ts";
import { startProxy, type TcpProxy } from "./harness/proxy.ts";
import { sleep, waitFor } from "./harness/wait.ts";
import {
  AcquireTimeoutError,
  type Handler,
  NoEndpointAvailableError,
  Pool,
  PoolClosedError,
  PoolError,
  SessionLostError,
  TransactionAbortedError,
} from "../mod.ts";

const SEED = Number(process.env.PGDBPOOL_FC_SEED ?? 20261129);
const RUNS = Number(process.env.PGDBPOOL_FC_RUNS ?? 25);
const TIME_LIMIT_MS = Number(process.env.PGDBPOOL_FC_TIME_LIMIT_MS ?? 90_000);
/** Any single operation taking longer than this is a hang. */
const OP_DEADLINE_MS = Number(process.env.PGDBPOOL_FC_DEADLINE_MS ?? 15_000);
/**
 * How far past its timeout (`timeout_ms`, else the groups' `acquire_timeout_ms` of 300 ms) a
 * `pool.acquire()` may settle: room for a loaded 2-core machine, far below the connect_timeout a
 * wait on a silent host's ping would take.
 */
const ACQUIRE_SLACK_MS = 1_500;
const VERBOSE = process.env.PGDBPOOL_FC_VERBOSE === "1";
/** Development: log violations and carry on instead of failing (nothing is shrunk). */
const SURVEY = process.env.PGDBPOOL_FC_SURVEY === "1";
/**
 * Defects the programs can be told to steer around while one is open (comma-separated; each has
 * deterministic regression tests below). All three are fixed, so nothing is avoided by default:
 * - "startup": faults (kill, reset, blackhole, close) that land while postgres.js is still
 *   starting a session up (fixed: the driver settles such a session itself);
 * - "release-in-flight": a handler released while its first statement is in flight (fixed:
 *   release waits for it);
 * - "silent-host-no-probe": with health_check_interval_ms: 0 a statement on a blackholed host
 *   (fixed: statements arm a probe after connect_timeout).
 */
const AVOID = new Set((process.env.PGDBPOOL_FC_AVOID ?? "").split(",").filter(Boolean));
const STARTUP_FAULTS = !AVOID.has("startup");
const RELEASE_IN_FLIGHT = !AVOID.has("release-in-flight");
const NO_PROBE_CONFIGS = !AVOID.has("silent-host-no-probe");
/** A session still in postgres.js's start-up: authenticated, array types not yet fetched. */
const IN_STARTUP = "(query = '' OR query LIKE '%typarray%')";

/** The pool logs in as this non-superuser: role connection limits do not apply to superusers. */
const ROLE = "prop_user";
const ROLE_PASS = `prop_${Math.random().toString(36).slice(2)}`;
/** Handler slots: 0-2 check out from the autocommit group, 3-5 from the transaction group. */
const SLOTS = 6;
const groupOfSlot = (slot: number): GroupName => slot < SLOTS / 2 ? "auto" : "tx";

let cluster: PgCluster;
let proxy: TcpProxy;
let runCounter = 0;

// Errors that escaped as unhandled rejections while this file runs ("an idle connection's error
// never becomes an unhandled rejection"; Deno and Node end a program on one). Deno's and Bun's
// test runners already fail the running test on one; where a runner does not, they are recorded
// here as violations of the program that was running.
const strays: unknown[] = [];
const onStray = (reason: unknown) => {
  strays.push(reason);
};
const onStrayEvent = (event: Event) => {
  event.preventDefault();
  strays.push((event as PromiseRejectionEvent).reason);
};
const isDeno = "Deno" in globalThis;

before(async () => {
  if (isDeno) globalThis.addEventListener("unhandledrejection", onStrayEvent);
  else process.on("unhandledRejection", onStray);
  cluster = await startCluster({ replicas: 1 });
  // The harness's admin sessions log in as the bootstrap superuser (cluster.user); the pool
  // gets its own ordinary role so that ALTER ROLE ... CONNECTION LIMIT refuses it.
  await cluster.primary.query(`CREATE ROLE ${ROLE} LOGIN PASSWORD '${ROLE_PASS}'`);
  await cluster.primary.query(
    `CREATE TABLE ledger (run int NOT NULL, w int NOT NULL, ck int NOT NULL,
      pid int NOT NULL, port int NOT NULL, PRIMARY KEY (run, w))`,
  );
  await cluster.primary.query(`GRANT SELECT, INSERT ON ledger TO ${ROLE}`);
  await cluster.waitForReplication();
  proxy = await startProxy(cluster.primary);
}, { timeout: 120_000 });

after(async () => {
  if (isDeno) globalThis.removeEventListener("unhandledrejection", onStrayEvent);
  else process.off("unhandledRejection", onStray);
  await proxy?.close();
  await cluster?.close();
}, { timeout: 60_000 });

// ---------------------------------------------------------------------------------------------
// Programs

type GroupName = "auto" | "tx";

type Cmd =
  /** Statements on an empty slot check out first (with the group's defaults). */
  /** after: read-your-writes, `{ after: pool.token }` (autocommit slots, once a token exists). */
  | {
    op: "checkout";
    slot: number;
    timeoutMs: number | null;
    abortAfterMs: number | null;
    after: boolean;
  }
  /**
   * then: "commit" commits right after the write, in turn (transaction slots); "release"
   * releases the handler at once, the write still in flight (a block left without awaiting).
   */
  | { op: "write"; slot: number; then: "none" | "commit" | "release"; wait: boolean }
  | { op: "read"; slot: number; sleepMs: number; wait: boolean }
  | { op: "fail"; slot: number; wait: boolean }
  | { op: "commit"; slot: number; wait: boolean }
  | { op: "rollback"; slot: number; wait: boolean }
  /**
   * `` db.sql`BEGIN` ``: a block the pool does not open itself. In an autocommit slot the
   * handler's writes are then the block's, decided by commit, rollback or release.
   */
  | { op: "begin"; slot: number; wait: boolean }
  /** now: release at once, even with statements of the handler in flight; else in turn. */
  | { op: "release"; slot: number; how: "now" | "sync" | "async"; wait: boolean }
  | { op: "abort"; slot: number }
  | { op: "oneshot"; group: GroupName; write: boolean; wait: boolean }
  /** `pool.acquire()`, released at once: it must settle within its timeout (see ACQUIRE_SLACK_MS). */
  | { op: "acquire"; group: GroupName; timeoutMs: number | null; wait: boolean }
  /**
   * A one-shot with a value that cannot be sent: `undefined` (refused before anything is sent)
   * or "infinity" for a timestamptz (postgres.js cannot encode it; Bun's SQL sends NULL).
   */
  | { op: "bad"; group: GroupName; kind: "undefined" | "unparseable"; wait: boolean }
  | { op: "kill"; server: "primary" | "replica"; all: boolean }
  | { op: "blackhole" }
  | { op: "restore" }
  | { op: "drop" }
  | { op: "limit"; n: number }
  | { op: "unlimit" }
  | { op: "close"; wait: boolean }
  | { op: "settle" }
  /** ms 0: a few microtasks only (statements started just before are mid-flight). */
  | { op: "sleep"; ms: number };

interface Config {
  autoSize: number;
  txSize: number;
  autoRole: "any" | "primary";
  validateAfterMs: number;
  healthCheckIntervalMs: number;
  /** At the end: release every handler before close() (else close with handlers held). */
  releaseBeforeClose: boolean;
}

const slotArb = fc.integer({ min: 0, max: SLOTS - 1 });
const groupArb = fc.constantFrom<GroupName>("auto", "tx");

const cmdArb: fc.Arbitrary<Cmd> = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      op: fc.constant("checkout" as const),
      slot: slotArb,
      timeoutMs: fc.constantFrom(null, 30, 1000),
      abortAfterMs: fc.constantFrom(null, null, 0, 20),
      after: fc.boolean(),
    }),
  },
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant("write" as const),
      slot: slotArb,
      then: fc.constantFrom<"none" | "commit" | "release">("none", "none", "commit", "release"),
      wait: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("read" as const),
      slot: slotArb,
      sleepMs: fc.constantFrom(0, 100, 300),
      wait: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("fail" as const), slot: slotArb, wait: fc.boolean() }),
  },
  {
    weight: 1,
    arbitrary: fc.record({
      op: fc.constant("bad" as const),
      group: groupArb,
      kind: fc.constantFrom<"undefined" | "unparseable">("undefined", "unparseable"),
      wait: fc.boolean(),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({ op: fc.constant("commit" as const), slot: slotArb, wait: fc.boolean() }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("rollback" as const),
      slot: slotArb,
      wait: fc.boolean(),
    }),
  },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("begin" as const), slot: slotArb, wait: fc.boolean() }),
  },
  {
    weight: 4,
    arbitrary: fc.record({
      op: fc.constant("release" as const),
      slot: slotArb,
      how: fc.constantFrom<"now" | "sync" | "async">("now", "now", "sync", "async"),
      wait: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant("abort" as const), slot: slotArb }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant("oneshot" as const),
      group: groupArb,
      write: fc.boolean(),
      wait: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("acquire" as const),
      group: groupArb,
      timeoutMs: fc.constantFrom(null, 30, 300),
      wait: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant("kill" as const),
      server: fc.constantFrom<"primary" | "replica">("primary", "replica"),
      all: fc.boolean(),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ op: "blackhole" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "restore" as const }) },
  ...(STARTUP_FAULTS ? [{ weight: 1, arbitrary: fc.constant({ op: "drop" as const }) }] : []),
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("limit" as const), n: fc.constantFrom(0, 1) }),
  },
  { weight: 1, arbitrary: fc.constant({ op: "unlimit" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("close" as const), wait: fc.boolean() }),
  },
  { weight: 1, arbitrary: fc.constant({ op: "settle" as const }) },
  {
    weight: 1,
    arbitrary: fc.record({ op: fc.constant("sleep" as const), ms: fc.constantFrom(0, 10, 300) }),
  },
);

const configArb: fc.Arbitrary<Config> = fc.record({
  autoSize: fc.integer({ min: 2, max: 3 }),
  txSize: fc.integer({ min: 2, max: 3 }),
  autoRole: fc.constantFrom<"any" | "primary">("any", "primary"),
  validateAfterMs: fc.constantFrom(0, 1000),
  healthCheckIntervalMs: NO_PROBE_CONFIGS ? fc.constantFrom(200, 0) : fc.constant(200),
  releaseBeforeClose: fc.boolean(),
});

const programArb = fc.tuple(configArb, fc.array(cmdArb, { minLength: 4, maxLength: 24 }));

// ---------------------------------------------------------------------------------------------
// Running a program

class Violation extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Violation";
  }
}

const HANG = Symbol("hang");
type Settled<T> = { ok: true; value: T } | { ok: false; err: unknown };

interface Stamp {
  pid: number;
  port: number;
}

type Fate = "present" | "absent" | "unknown" | "pending";

interface Write {
  w: number;
  ck: number;
  where: string;
  fate: Fate;
  stamp?: Stamp;
}

interface Held {
  id: number;
  db: Handler;
  group: GroupName;
  autocommit: boolean;
  ctl: AbortController;
  /** Statements of one handler run one after another, as a request handler would issue them. */
  chain: Promise<void>;
  /** Operations of the chain started and not yet settled. */
  pending: number;
  released: boolean;
  /** Current epoch (checkout, or a rollback() that acknowledged a lost session). */
  ck: number;
  stamp?: Stamp;
  /** A SessionLostError was seen in this epoch. */
  lost: boolean;
  /** A statement failed inside the open transaction: COMMIT cannot succeed. */
  aborted: boolean;
  /** Writes of the open transaction (transaction groups), decided by commit / rollback. */
  txWrites: Write[];
  /** An autocommit handler inside a block it opened through `db.sql` (`autocommit` is off). */
  manualBlock: boolean;
}

const INSERT = `INSERT INTO ledger (run, w, ck, pid, port)
  VALUES ($1, $2, $3, pg_backend_pid(), inet_server_port()) RETURNING pid, port`;
const READ = "SELECT pg_backend_pid() AS pid, inet_server_port() AS port FROM pg_sleep($1::float8)";

const ABORT_MESSAGE = "prop-test abort";

function describeErr(err: unknown): string {
  if (err === HANG) return "HANG";
  if (err instanceof SessionLostError) return `${err.name}(${err.outcome})`;
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return `${err.name}${code === undefined ? "" : `[${String(code)}]`}: ${
      err.message.slice(0, 120)
    }`;
  }
  return String(err);
}

/** Errors the pool may legitimately raise under faults. Anything else is a defect. */
function expectedError(err: unknown): boolean {
  if (err instanceof PoolError) return true;
  if (err instanceof TypeError) return /was used after release/.test(err.message);
  if (err instanceof Error && err.message === ABORT_MESSAGE) return true;
  // PostgreSQL errors (PostgresError, with a SQLSTATE) and connection errors (postgres.js or OS
  // codes) pass through with a string `code`.
  return err instanceof Error && typeof (err as { code?: unknown }).code === "string";
}

/** Errors of a waiting checkout that never got a connection. */
function isCheckoutFailure(err: unknown): boolean {
  return err instanceof AcquireTimeoutError || err instanceof NoEndpointAvailableError ||
    (err instanceof Error && err.message === ABORT_MESSAGE);
}

function fateOfRejected(err: unknown): Fate {
  return err instanceof SessionLostError && err.outcome === "unknown" ? "unknown" : "absent";
}

async function poolSessions(app: string, withHealth: boolean) {
  const text = `SELECT pid, state, application_name AS app FROM pg_stat_activity
    WHERE backend_type = 'client backend' AND usename = $1
      AND (application_name = $2 OR ($3 AND application_name = $2 || '/health'))`;
  const per = await Promise.all(cluster.servers.map(async (server) => {
    const rows = await server.query(text, [ROLE, app, withHealth]);
    return rows.map((r) => ({
      server: server.name,
      pid: r.pid as number,
      state: r.state as string,
    }));
  }));
  return per.flat();
}

async function setLimit(n: number): Promise<void> {
  await cluster.primary.query(`ALTER ROLE ${ROLE} CONNECTION LIMIT ${Math.trunc(n)}`);
}

async function runProgram(cfg: Config, cmds: readonly Cmd[]): Promise<void> {
  strays.length = 0; // left over by an earlier test: not this program's
  const run = ++runCounter;
  const app = `prop${run}`;
  const trace: string[] = [];
  const t0 = performance.now();
  const log = (line: string) => {
    const entry = `${String(Math.round(performance.now() - t0)).padStart(5)} ms  ${line}`;
    trace.push(entry);
    if (VERBOSE) console.log(`[${app}] ${entry}`);
  };
  const violations: string[] = [];
  const violate = (msg: string) => {
    log(`VIOLATION ${msg}`);
    violations.push(msg);
  };
  const fail = (): void => {
    if (SURVEY) {
      // Survey mode (development): report and carry on, to see every kind of violation.
      console.log(
        `SURVEY ${JSON.stringify(cfg)} ${JSON.stringify(cmds)}\n  ${violations.join("\n  ")}`,
      );
      violations.length = 0;
      return;
    }
    throw new Violation(
      `${violations.join("\n")}\nconfig: ${JSON.stringify(cfg)}\nprogram: ${
        JSON.stringify(cmds)
      }\ntrace:\n${trace.slice(-80).join("\n")}`,
    );
  };

  const sizes: Record<GroupName, number> = { auto: cfg.autoSize, tx: cfg.txSize };
  const pool = new Pool({
    db: [
      {
        host: proxy.host,
        port: proxy.port,
        name: cluster.database,
        user: ROLE,
        pass: ROLE_PASS,
        connect_timeout: 1,
      },
      {
        host: cluster.replicas[0].host,
        port: cluster.replicas[0].port,
        name: cluster.database,
        user: ROLE,
        pass: ROLE_PASS,
        connect_timeout: 1,
      },
    ],
    groups: {
      auto: { connection_count: cfg.autoSize, acquire_timeout_ms: 300, role: cfg.autoRole },
      tx: {
        connection_count: cfg.txSize,
        autocommit: false,
        acquire_timeout_ms: 300,
        role: "primary",
      },
    },
    application_name: app,
    // PGDBPOOL_TEST_DRIVER=bun: the programs run on Bun's native driver.
    ...testDriver(),
    validate_after_ms: cfg.validateAfterMs,
    health_check_interval_ms: cfg.healthCheckIntervalMs,
    retry_backoff_max_ms: 400,
    close_timeout_ms: 200,
  });

  const slots: (Held | undefined)[] = Array(SLOTS).fill(undefined);
  const handlers: Held[] = [];
  const writes: Write[] = [];
  const inflight = new Set<Promise<unknown>>();
  let closing: Promise<void> | undefined;
  let nextW = 0;
  let nextCk = 0;
  let nextH = 0;

  const track = <T>(p: Promise<T>): Promise<T> => {
    inflight.add(p);
    p.finally(() => inflight.delete(p)).catch(() => {});
    return p;
  };

  /** Settles `p` within the deadline; a hang is recorded as a violation. */
  const guard = async <T>(
    p: Promise<T>,
    what: string,
    expected: (err: unknown) => boolean = expectedError,
  ): Promise<Settled<T>> => {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const deadline = new Promise<typeof HANG>((resolve) => {
      timer = setTimeout(() => resolve(HANG), OP_DEADLINE_MS);
    });
    try {
      const value = await Promise.race([p, deadline]);
      if (value === HANG) {
        violate(`hang: ${what} did not settle within ${OP_DEADLINE_MS} ms`);
        p.catch(() => {});
        return { ok: false, err: HANG };
      }
      return { ok: true, value: value as T };
    } catch (err) {
      if (!expected(err)) violate(`unexpected error from ${what}: ${describeErr(err)}`);
      return { ok: false, err };
    } finally {
      clearTimeout(timer);
    }
  };

  const checkStrays = () => {
    for (const reason of strays.splice(0)) {
      violate(
        `unhandled rejection: ${describeErr(reason)}${
          reason instanceof Error && reason.stack
            ? `\n${reason.stack.split("\n").slice(0, 6).join("\n")}`
            : ""
        }`,
      );
    }
  };

  const checkStats = (where: string) => {
    const stats = pool.stats().groups;
    for (const g of ["auto", "tx"] as const) {
      const s = stats[g];
      const bad = s.size !== sizes[g] || s.busy < 0 || s.busy > s.size || s.idle < 0 ||
        s.idle > s.open || s.open > s.size || s.waiting < 0;
      if (bad) {
        violate(`stats of ${g} after ${where}: ${JSON.stringify({ ...s, wait_ms: undefined })}`);
      }
    }
  };

  const stampOf = (rows: unknown): Stamp => {
    const row = (rows as { pid: number; port: number }[])[0];
    return { pid: Number(row.pid), port: Number(row.port) };
  };

  /** One checkout epoch, one session. */
  const seeStamp = (h: Held, stamp: Stamp, what: string) => {
    if (h.stamp === undefined) h.stamp = stamp;
    else if (h.stamp.pid !== stamp.pid || h.stamp.port !== stamp.port) {
      violate(
        `${what}: h${h.id} moved from session ${h.stamp.port}/${h.stamp.pid} to ${stamp.port}/${stamp.pid} after its first statement`,
      );
    }
  };

  /** Checks what a statement of a handler may answer given its state when it started. */
  const checkAnswer = (
    h: Held,
    before: { released: boolean; lost: boolean },
    r: Settled<unknown>,
    what: string,
  ) => {
    if (before.released) {
      if (r.ok || !(r.err instanceof TypeError)) {
        violate(`${what} after release: ${r.ok ? "succeeded" : describeErr(r.err)}`);
      }
      return;
    }
    if (before.lost) {
      const refused = !r.ok &&
        ((r.err instanceof SessionLostError && r.err.outcome === "not-executed") ||
          r.err instanceof PoolClosedError);
      if (!refused) {
        violate(
          `${what} after a lost session: ${r.ok ? "succeeded" : describeErr(r.err)} (want refusal)`,
        );
      }
    }
    if (!r.ok && r.err instanceof SessionLostError) h.lost = true;
    const e = r.ok ? undefined : r.err as { name?: unknown; severity?: unknown };
    if (!h.autocommit && e?.name === "PostgresError" && e.severity === "ERROR") h.aborted = true;
  };

  // --- slot operations, run in turn on the handler's chain ---------------------------------

  /**
   * Runs `fn` on the handler's chain. When nothing of the handler is in flight the statement is
   * issued at once, synchronously, as a caller's `db.query(...)` is (the step right after it
   * may then release the handler with the statement in flight).
   */
  const onHandler = (h: Held, what: string, fn: () => Promise<void>): Promise<void> => {
    const run = () => {
      h.pending++;
      return fn().finally(() => h.pending--);
    };
    const p = (h.pending === 0 ? run() : h.chain.then(run)).catch((err) =>
      violate(`test bug in ${what}: ${describeErr(err)}`)
    );
    h.chain = p;
    return track(p);
  };

  const doWrite = (h: Held) => async () => {
    const before = { released: h.released, lost: h.lost };
    const w: Write = { w: nextW++, ck: h.ck, where: `h${h.id}/${h.group}`, fate: "pending" };
    writes.push(w);
    const what = `write w${w.w} on h${h.id}`;
    const r = await guard(h.db.query(INSERT, [run, w.w, w.ck]), what);
    log(`${what} (ck ${w.ck}): ${r.ok ? "ok" : describeErr(r.err)}`);
    checkAnswer(h, before, r, what);
    if (r.ok) {
      w.stamp = stampOf(r.value);
      seeStamp(h, w.stamp, what);
      if (h.autocommit) w.fate = before.released ? "unknown" : "present";
      else h.txWrites.push(w);
    } else {
      w.fate = fateOfRejected(r.err);
    }
  };

  const doRead = (h: Held, sleepMs: number) => async () => {
    const before = { released: h.released, lost: h.lost };
    const what = `read(${sleepMs}) on h${h.id}`;
    const r = await guard(h.db.query(READ, [sleepMs / 1000]), what);
    log(`${what}: ${r.ok ? `ok ${JSON.stringify(stampOf(r.value))}` : describeErr(r.err)}`);
    checkAnswer(h, before, r, what);
    if (r.ok) seeStamp(h, stampOf(r.value), what);
  };

  const doFail = (h: Held) => async () => {
    const before = { released: h.released, lost: h.lost };
    const what = `1/0 on h${h.id}`;
    const r = await guard(h.db.query("SELECT 1/0 AS x"), what);
    log(`${what}: ${r.ok ? "ok" : describeErr(r.err)}`);
    if (r.ok) violate(`${what} succeeded`);
    checkAnswer(h, before, r, what);
  };

  const doCommit = (h: Held) => async () => {
    const before = { released: h.released, lost: h.lost };
    const what = `commit on h${h.id}`;
    const r = await guard(h.db.commit(), what);
    log(
      `${what} (${h.txWrites.map((w) => `w${w.w}`).join(",")}): ${
        r.ok ? "ok" : describeErr(r.err)
      }`,
    );
    const aborted = h.aborted;
    checkAnswer(h, before, r, what);
    if (aborted && r.ok && !before.released) {
      violate(`${what} succeeded although a statement of its transaction had failed`);
    }
    if (!r.ok && r.err instanceof TransactionAbortedError && !aborted) {
      violate(`${what}: TransactionAbortedError without a failed statement in the transaction`);
    }
    h.aborted = false;
    const fate: Fate = r.ok ? "present" : fateOfRejected(r.err);
    for (const w of h.txWrites.splice(0)) w.fate = fate;
    endManualBlock(h);
  };

  // A block opened through db.sql ends with commit or rollback (or with its session): the
  // handler is back in autocommit mode.
  const endManualBlock = (h: Held) => {
    if (!h.manualBlock) return;
    h.manualBlock = false;
    h.autocommit = true;
  };

  const doBegin = (h: Held) => async () => {
    const before = { released: h.released, lost: h.lost };
    const what = `db.sql BEGIN on h${h.id}`;
    let sent: Promise<unknown>;
    try {
      sent = Promise.resolve(h.db.sql`BEGIN`);
    } catch (err) {
      sent = Promise.reject(err);
    }
    // A handler whose checkout failed has no session to hand out as db.sql.
    const r = await guard(sent, what, (err) =>
      expectedError(err) ||
      (err instanceof TypeError && /still waiting for a connection/.test(err.message)));
    log(`${what}: ${r.ok ? "ok" : describeErr(r.err)}`);
    checkAnswer(h, before, r, what);
    if (r.ok && h.autocommit && !before.released) {
      h.autocommit = false;
      h.manualBlock = true;
    }
  };

  const doRollback = (h: Held) => async () => {
    const before = { released: h.released, lost: h.lost };
    const what = `rollback on h${h.id}`;
    const r = await guard(h.db.rollback(), what);
    log(`${what}: ${r.ok ? "ok" : describeErr(r.err)}`);
    if (before.released && (r.ok || !(r.err instanceof TypeError))) {
      violate(`${what} after release: ${r.ok ? "succeeded" : describeErr(r.err)}`);
    }
    for (const w of h.txWrites.splice(0)) w.fate = "absent";
    h.aborted = false;
    endManualBlock(h);
    if (before.lost) {
      // The caller acknowledged the loss: the handler may go on, on a new session.
      h.lost = false;
      h.stamp = undefined;
      h.ck = nextCk++;
    }
  };

  const release = async (h: Held, how: "now" | "sync" | "async") => {
    h.released = true;
    if (how === "async") {
      const r = await guard(h.db[Symbol.asyncDispose](), `asyncDispose of h${h.id}`);
      log(`asyncDispose h${h.id}: ${r.ok ? "ok" : describeErr(r.err)}`);
    } else {
      try {
        h.db.release();
      } catch (err) {
        violate(`release of h${h.id} threw ${describeErr(err)}`);
      }
      log(`release(${how}) h${h.id}`);
    }
  };

  const doOneShot = async (group: GroupName, write: boolean) => {
    const ck = nextCk++;
    if (write) {
      const w: Write = { w: nextW++, ck, where: `oneshot/${group}`, fate: "pending" };
      writes.push(w);
      const what = `one-shot write w${w.w} on ${group}`;
      const r = await guard(pool.query(group, INSERT, [run, w.w, ck]), what);
      log(`${what}: ${r.ok ? "ok" : describeErr(r.err)}`);
      if (r.ok) {
        w.stamp = stampOf(r.value);
        w.fate = "present";
      } else w.fate = fateOfRejected(r.err);
    } else {
      const what = `one-shot read on ${group}`;
      const r = await guard(pool.query(group, READ, [0]), what);
      log(`${what}: ${r.ok ? "ok" : describeErr(r.err)}`);
    }
  };

  const doAcquire = async (group: GroupName, timeoutMs: number | null) => {
    const limitMs = timeoutMs ?? 300;
    const what = `acquire(${group}, ${limitMs} ms)`;
    const started = performance.now();
    const r = await guard(
      pool.acquire(group, timeoutMs === null ? {} : { timeout_ms: timeoutMs }),
      what,
    );
    const ms = Math.round(performance.now() - started);
    log(`${what}: ${r.ok ? "ok" : describeErr(r.err)} after ${ms} ms`);
    if (r.ok) r.value.release();
    if (ms > limitMs + ACQUIRE_SLACK_MS) violate(`${what} settled after ${ms} ms`);
  };

  const doBad = async (group: GroupName, kind: "undefined" | "unparseable") => {
    const what = `one-shot with an ${kind} value on ${group}`;
    // Its own error, or what any statement may meet under faults; never a server's ERROR,
    // which would be another statement's.
    const own = (err: unknown) =>
      kind === "undefined"
        ? err instanceof TypeError && /\$1 is undefined/.test(err.message)
        : err instanceof RangeError && /\$1 cannot be sent/.test(err.message);
    const expected = (err: unknown) =>
      own(err) ||
      (expectedError(err) && !(err instanceof TypeError) &&
        (err as { severity?: unknown }).severity !== "ERROR");
    const r = kind === "undefined"
      ? await guard(
        pool.query(group, "SELECT $1::text AS t", [undefined as unknown as string]),
        what,
        expected,
      )
      : await guard(pool.query(group, "SELECT $1::timestamptz AS t", ["infinity"]), what, expected);
    log(`${what}: ${r.ok ? `ok ${JSON.stringify(r.value)}` : describeErr(r.err)}`);
    if (r.ok) {
      // Only Bun's driver sends "infinity" (as NULL); never another statement's rows.
      const rows = [...r.value] as object[];
      const own = kind === "unparseable" && testDriver().driver === "bun" && rows.length === 1 &&
        Object.keys(rows[0]).join() === "t";
      if (!own) violate(`${what} resolved to ${JSON.stringify(rows)}`);
    }
  };

  const checkout = (
    slot: number,
    timeoutMs: number | null,
    afterToken = false,
  ): Held | undefined => {
    const group = groupOfSlot(slot);
    const ctl = new AbortController();
    const after = afterToken && group === "auto" ? pool.token : undefined;
    let db: Handler;
    try {
      db = pool.handler(group, {
        signal: ctl.signal,
        ...(timeoutMs === null ? {} : { timeout_ms: timeoutMs }),
        ...(after === undefined ? {} : { after }),
      });
    } catch (err) {
      log(`handler(${group}) threw ${describeErr(err)}`);
      if (!(err instanceof PoolClosedError && closing !== undefined)) {
        violate(`pool.handler() threw ${describeErr(err)}`);
      }
      return undefined;
    }
    const h: Held = {
      id: nextH++,
      db,
      group,
      autocommit: group === "auto",
      ctl,
      chain: Promise.resolve(),
      pending: 0,
      released: false,
      ck: nextCk++,
      lost: false,
      aborted: false,
      txWrites: [],
      manualBlock: false,
    };
    handlers.push(h);
    slots[slot] = h;
    log(
      `h${h.id} = handler(${group}${timeoutMs === null ? "" : `, ${timeoutMs} ms`}${
        after === undefined ? "" : `, after ${after}`
      }) in slot ${slot}`,
    );
    return h;
  };

  // --- barriers and checks ------------------------------------------------------------------

  const drain = async () => {
    while (inflight.size > 0) await Promise.allSettled([...inflight]);
  };

  const releaseAll = async () => {
    await drain();
    for (let i = 0; i < SLOTS; i++) {
      const h = slots[i];
      if (h === undefined) continue;
      slots[i] = undefined;
      await release(h, "async");
    }
    await drain();
  };

  const expectIdleCapacity = async (where: string) => {
    try {
      await waitFor(() => {
        const s = pool.stats().groups;
        return s.auto.busy === 0 && s.tx.busy === 0 && s.auto.waiting === 0 &&
          s.tx.waiting === 0;
      }, { timeoutMs: 5_000, message: "busy == 0 and waiting == 0" });
    } catch {
      const s = pool.stats().groups;
      violate(
        `${where}: nothing is held, yet busy/waiting = auto ${s.auto.busy}/${s.auto.waiting}, tx ${s.tx.busy}/${s.tx.waiting}`,
      );
    }
  };

  const expectServerTidy = async (where: string) => {
    let last = "";
    try {
      await waitFor(async () => {
        const sessions = await poolSessions(app, false);
        const s = pool.stats().groups;
        const open = s.auto.open + s.tx.open;
        const inTx = sessions.filter((x) => x.state?.startsWith("idle in transaction"));
        last = `${sessions.length} sessions (${
          sessions.map((x) => `${x.server}/${x.pid}:${x.state}`).join(", ")
        }), open ${open}`;
        return inTx.length === 0 && sessions.length <= open;
      }, { timeoutMs: 5_000, message: "server sessions tidy" });
    } catch {
      violate(`${where}: server not tidy: ${last}`);
    }
  };

  /** Sessions in a transaction: no more than the held handlers that have one open. */
  const expectNoStrayTransactions = async (where: string) => {
    let last = "";
    try {
      await waitFor(async () => {
        const sessions = await poolSessions(app, false);
        const inTx = sessions.filter((x) => x.state?.startsWith("idle in transaction"));
        const holders = handlers.filter((h) => !h.released && h.db.inTransaction).length;
        last = `${inTx.length} sessions idle in transaction (${
          inTx.map((x) => `${x.server}/${x.pid}`).join(", ")
        }), ${holders} held handlers in a transaction`;
        return inTx.length <= holders;
      }, { timeoutMs: 5_000, message: "no stray transactions" });
    } catch {
      violate(`${where}: ${last}`);
    }
  };

  const expectNoSessions = async (where: string) => {
    let last = "";
    try {
      await waitFor(async () => {
        const sessions = await poolSessions(app, true);
        last = sessions.map((x) => `${x.server}/${x.pid}:${x.state}`).join(", ");
        return sessions.length === 0;
      }, { timeoutMs: 5_000, message: "no pool sessions" });
    } catch {
      violate(`${where}: pool sessions left on the servers: ${last}`);
    }
  };

  /**
   * While the known start-up defect is open (see the regressions below), faults that end
   * sessions from the client side (blackhole, close) first let the operations in flight settle:
   * connections open lazily under a statement, so none is then in postgres.js's start-up.
   */
  const startupQuiet = async () => {
    if (STARTUP_FAULTS) return;
    await drain();
  };

  /**
   * A hung host that comes back. Connections that lived through the blackhole lost data both
   * ways, which TCP never does, so they must not carry on: the pool cuts them off itself once
   * its probe marks the endpoint down (that must happen within a few seconds), and whatever is
   * left (connections opened since, stuck before authentication) is reset, as after a reboot.
   */
  const liftBlackhole = async () => {
    if (proxy.mode !== "blackhole") return;
    // Without background probes (interval 0) nothing is bound to notice: see the regressions.
    const probing = cfg.healthCheckIntervalMs > 0;
    if (!STARTUP_FAULTS && probing && closing === undefined && proxy.connections > 0) {
      try {
        await waitFor(() => pool.stats().endpoints[0].state === "down", {
          timeoutMs: 4_000,
          message: "blackholed primary marked down",
        });
      } catch {
        violate("the blackholed primary, with connections open to it, was not marked down in 4 s");
      }
    }
    proxy.dropAll();
    proxy.mode = "pass";
  };

  const restoreFaults = async () => {
    await liftBlackhole();
    await setLimit(-1);
  };

  const startClose = () => {
    if (closing !== undefined) return closing;
    log("close()");
    closing = track(
      guard(pool.close(), "pool.close()").then((r) => {
        log(`close resolved: ${r.ok ? "ok" : describeErr(r.err)}`);
      }),
    );
    return closing;
  };

  const afterClose = async () => {
    await startClose();
    await drain();
    const stats = pool.stats().groups;
    for (const g of ["auto", "tx"] as const) {
      if (stats[g].open !== 0 || stats[g].idle !== 0) {
        violate(`after close ${g} still has open ${stats[g].open}, idle ${stats[g].idle}`);
      }
    }
    try {
      pool.handler("auto");
      violate("pool.handler() after close did not throw");
    } catch (err) {
      if (!(err instanceof PoolClosedError)) {
        violate(`pool.handler() after close threw ${describeErr(err)}`);
      }
    }
    const q = await guard(pool.query("tx", "SELECT 1"), "pool.query after close");
    if (q.ok || !(q.err instanceof PoolClosedError)) {
      violate(`pool.query after close: ${q.ok ? "succeeded" : describeErr(q.err)}`);
    }
    for (const h of handlers) {
      const r = await guard(h.db.query("SELECT 1"), `statement on h${h.id} after close`);
      const want = h.released ? TypeError : PoolClosedError;
      // A handler whose waiting checkout failed keeps answering with that failure (the pool
      // documents PoolClosedError for "any old handler"; reported, tolerated here).
      const stale = !r.ok && !h.released && h.db.endpoint === undefined &&
        isCheckoutFailure(r.err);
      if (r.ok || !(r.err instanceof want || stale)) {
        violate(
          `statement on ${h.released ? "released" : "held"} h${h.id} after close: ${
            r.ok ? "succeeded" : describeErr(r.err)
          } (want ${want.name})`,
        );
      }
    }
    await expectNoSessions("after close");
  };

  const checkLedger = async () => {
    const rows = await cluster.primary.query(
      "SELECT w, ck, pid, port FROM ledger WHERE run = $1 ORDER BY w",
      [run],
    );
    const stored = new Map<number, Stamp & { ck: number }>();
    for (const r of rows) stored.set(r.w, { ck: r.ck, pid: r.pid, port: r.port });
    for (const w of writes) {
      const row = stored.get(w.w);
      const fate = w.fate === "pending" ? "absent" : w.fate; // never committed
      if (fate === "present" && row === undefined) {
        violate(`acknowledged write w${w.w} (${w.where}) is missing`);
      } else if (fate === "absent" && row !== undefined) {
        violate(`write w${w.w} (${w.where}) was reported as not done, yet it is stored`);
      }
      if (row !== undefined && w.stamp !== undefined) {
        if (row.pid !== w.stamp.pid || row.port !== w.stamp.port) {
          violate(
            `write w${w.w} stored by ${row.port}/${row.pid}, answered by ${w.stamp.port}/${w.stamp.pid}`,
          );
        }
      }
    }
    const byCk = new Map<number, Set<string>>();
    for (const row of stored.values()) {
      const set = byCk.get(row.ck) ?? new Set<string>();
      set.add(`${row.port}/${row.pid}`);
      byCk.set(row.ck, set);
    }
    for (const [ck, set] of byCk) {
      if (set.size > 1) {
        violate(`checkout epoch ck${ck} wrote from sessions ${[...set].join(", ")}`);
      }
    }
  };

  // --- the program --------------------------------------------------------------------------

  // Stats are also sampled while the pool works: at each of its events (dispatched in the middle
  // of failure handling, before a connection is replaced) and every few milliseconds.
  for (const type of ["connectionerror", "endpointdown", "endpointup", "acquiretimeout"]) {
    pool.addEventListener(type, () => checkStats(`event ${type}`));
  }
  const sampler = setInterval(() => checkStats("sampling"), 5);

  try {
    log(`config ${JSON.stringify(cfg)}`);
    for (const [i, cmd] of cmds.entries()) {
      log(`#${i} ${JSON.stringify(cmd)}`);
      switch (cmd.op) {
        case "checkout": {
          if (slots[cmd.slot] !== undefined) break;
          const h = checkout(cmd.slot, cmd.timeoutMs, cmd.after);
          if (h !== undefined && cmd.abortAfterMs !== null) {
            const abort = () => h.ctl.abort(new Error(ABORT_MESSAGE));
            if (cmd.abortAfterMs === 0) abort();
            else setTimeout(abort, cmd.abortAfterMs);
          }
          break;
        }
        case "write":
        case "read":
        case "fail":
        case "commit":
        case "rollback":
        case "begin": {
          const h = slots[cmd.slot] ?? checkout(cmd.slot, null);
          if (h === undefined) break;
          const fn = cmd.op === "write"
            ? doWrite(h)
            : cmd.op === "read"
            ? doRead(h, cmd.sleepMs)
            : cmd.op === "fail"
            ? doFail(h)
            : cmd.op === "commit"
            ? doCommit(h)
            : cmd.op === "begin"
            ? doBegin(h)
            : doRollback(h);
          let p = onHandler(h, cmd.op, fn);
          if (cmd.op === "write" && cmd.then === "commit" && !h.autocommit) {
            p = onHandler(h, "commit", doCommit(h));
          } else if (cmd.op === "write" && cmd.then === "release") {
            slots[cmd.slot] = undefined;
            if (RELEASE_IN_FLIGHT) await release(h, "now");
            else p = onHandler(h, "release", () => release(h, "sync"));
          }
          if (cmd.wait) await p;
          break;
        }
        case "release": {
          const h = slots[cmd.slot];
          if (h === undefined) break;
          slots[cmd.slot] = undefined;
          if (cmd.how === "now" && (RELEASE_IN_FLIGHT || h.pending === 0)) await release(h, "now");
          else {
            const how = cmd.how === "now" ? "sync" : cmd.how;
            const p = onHandler(h, "release", () => release(h, how));
            if (cmd.wait) await p;
          }
          break;
        }
        case "abort": {
          const h = slots[cmd.slot];
          if (h !== undefined) h.ctl.abort(new Error(ABORT_MESSAGE));
          break;
        }
        case "oneshot": {
          const p = track(doOneShot(cmd.group, cmd.write));
          if (cmd.wait) await p;
          break;
        }
        case "acquire": {
          const p = track(doAcquire(cmd.group, cmd.timeoutMs));
          if (cmd.wait) await p;
          break;
        }
        case "bad": {
          const p = track(doBad(cmd.group, cmd.kind));
          if (cmd.wait) await p;
          break;
        }
        case "kill": {
          const server = cmd.server === "primary" ? cluster.primary : cluster.replicas[0];
          const rows = await server.query(
            `SELECT pid, pg_terminate_backend(pid) AS ok FROM (
               SELECT pid FROM pg_stat_activity
               WHERE usename = $1 AND application_name = $2 AND ($4 OR NOT ${IN_STARTUP})
               ORDER BY pid LIMIT $3) s`,
            [ROLE, app, cmd.all ? 1000 : 1, STARTUP_FAULTS],
          );
          log(`killed ${rows.map((r) => r.pid).join(",") || "nothing"} on ${cmd.server}`);
          break;
        }
        case "blackhole":
          await startupQuiet();
          proxy.mode = "blackhole";
          break;
        case "restore":
          await liftBlackhole();
          break;
        case "drop":
          // Resets land at any moment, also in postgres.js's start-up (known defect).
          if (STARTUP_FAULTS) proxy.dropAll();
          break;
        case "limit":
          await setLimit(cmd.n);
          break;
        case "unlimit":
          await setLimit(-1);
          break;
        case "close": {
          await startupQuiet();
          const p = startClose();
          if (cmd.wait) await p;
          break;
        }
        case "settle": {
          await releaseAll();
          checkStats("settle");
          await expectIdleCapacity("settle");
          if (closing === undefined) await expectServerTidy("settle");
          break;
        }
        case "sleep":
          if (cmd.ms === 0) { for (let k = 0; k < 5; k++) await Promise.resolve(); }
          else await sleep(cmd.ms);
          break;
      }
      checkStats(`#${i} ${cmd.op}`);
      checkStrays();
      if (violations.length > 0) fail();
    }

    // The end: faults lifted, then close (with or without handlers still held), then checks.
    log("end of program");
    await restoreFaults();
    await drain();
    checkStats("end");
    if (closing === undefined) await expectNoStrayTransactions("end");
    if (cfg.releaseBeforeClose && closing === undefined) {
      await releaseAll();
      await expectIdleCapacity("end");
      await expectServerTidy("end");
    }
    await afterClose();
    await releaseAll();
    await expectIdleCapacity("after close and release");
    checkStats("after close");
    await checkLedger();
    await sleep(10);
    checkStrays();
    if (violations.length > 0) fail();
  } finally {
    clearInterval(sampler);
    proxy.dropAll();
    proxy.mode = "pass";
    await setLimit(-1).catch(() => {});
    if (closing === undefined) await Promise.race([pool.close(), sleep(5_000)]).catch(() => {});
    // Leave nothing behind for the next program (the role limit counts every session).
    await cluster.primary.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
      [ROLE],
    ).catch(() => {});
    await cluster.replicas[0].query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
      [ROLE],
    ).catch(() => {});
    await cluster.waitForReplication().catch(() => {});
    log(`done in ${Math.round(performance.now() - t0)} ms`);
  }
}

describe("property: random programs with faults keep the pool's invariants", () => {
  it(`holds for ${RUNS} random programs (seed ${SEED})`, { timeout: 170_000 }, async () => {
    const started = performance.now();
    await fc.assert(
      fc.asyncProperty(programArb, async ([cfg, cmds]) => {
        await runProgram(cfg, cmds);
      }),
      {
        seed: SEED,
        numRuns: RUNS,
        interruptAfterTimeLimit: TIME_LIMIT_MS,
        markInterruptAsFailure: false,
        verbose: VERBOSE ? 2 : 1,
      },
    );
    if (VERBOSE) console.log(`property: ${Math.round(performance.now() - started)} ms`);
  });
});

// ---------------------------------------------------------------------------------------------
// Regression tests: shrunk counterexamples found by the property, made deterministic.

function endpointAt(host: string, port: number, connectTimeoutS = 1) {
  return {
    host,
    port,
    name: cluster.database,
    user: ROLE,
    pass: ROLE_PASS,
    connect_timeout: connectTimeoutS,
  };
}

async function settleWithin<T>(p: Promise<T>, ms: number): Promise<Settled<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const value = await Promise.race([
      p,
      new Promise<typeof HANG>((resolve) => timer = setTimeout(() => resolve(HANG), ms)),
    ]);
    if (value === HANG) return { ok: false, err: HANG };
    return { ok: true, value: value as T };
  } catch (err) {
    return { ok: false, err };
  } finally {
    clearTimeout(timer);
  }
}

// The checks of the start-up regressions: the statement settled, nothing escaped unhandled,
// and a statement that failed was not reported as possibly run (it never went out).
function assertSettledUnsent(r: Settled<unknown>): void {
  assert.notEqual(r.ok === false && r.err, HANG, "the statement settles");
  assert.deepEqual(strays.map((e) => describeErr(e)), [], "no unhandled rejection");
  if (!r.ok) {
    assert.ok(
      !(r.err instanceof SessionLostError && r.err.outcome === "unknown"),
      `a statement never sent is not reported as possibly run (${describeErr(r.err)})`,
    );
  }
}

// The configuration both programs the property shrank to share.
const SHRUNK_CONFIG: Config = {
  autoSize: 2,
  txSize: 2,
  autoRole: "any",
  validateAfterMs: 0,
  healthCheckIntervalMs: 200,
  releaseBeforeClose: false,
};

// A runtime fails a test as soon as an unhandled rejection surfaces, and may start the next
// test while the failed one's body still runs. Each regression body therefore waits for the
// previous one to end, and lingers a moment before ending so that late rejections surface in it.
let previousBody: Promise<unknown> = Promise.resolve();
function serial(fn: () => Promise<void>): () => Promise<void> {
  return () => {
    const body = previousBody.then(() => fn().finally(() => sleep(300)));
    previousBody = body.catch(() => {});
    return body;
  };
}

describe("property regressions", () => {
  // A caller that leaves a block without awaiting its statement (`{ using db = ...;
  // db.query(...); }`) releases the handler while its first statement is in flight. The lease
  // awaits its (here trivial) validation step before sending, and does not look again whether
  // it was released meanwhile: release() checks the connection in with no transaction open,
  // then BEGIN and the INSERT are sent on a connection that is idle in the pool. The session
  // stays idle in transaction, and the next checkout runs inside that transaction: it sees the
  // released handler's write, and its COMMIT commits it. In an autocommit group the released
  // statement runs on a connection another checkout may hold (inside its transaction).
  it(
    "a handler released right after issuing its first statement",
    serial(async () => {
      const run = 1_000_000 + runCounter++;
      const app = "prop_release_first";
      const pool = new Pool({
        db: [endpointAt(cluster.primary.host, cluster.primary.port)],
        groups: { tx: { connection_count: 1, autocommit: false } },
        application_name: app,
        health_check_interval_ms: 0,
      });
      try {
        await pool.refresh(); // roles known: the checkout below is synchronous
        const h1 = pool.handler("tx");
        const p = h1.query(INSERT, [run, 1, 1]);
        p.catch(() => {});
        h1.release();
        const r1 = await settleWithin(p, OP_DEADLINE_MS);
        assert.notEqual(r1.ok === false && r1.err, HANG, "the statement settles");
        const inTx = await cluster.primary.query(
          "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state LIKE 'idle in transaction%'",
          [app],
        );
        const h2 = pool.handler("tx");
        const [{ n }] = await h2.query<{ n: number }>(
          "SELECT count(*)::int AS n FROM ledger WHERE run = $1",
          [run],
        );
        await h2.commit();
        h2.release();
        const stored = await cluster.primary.query("SELECT w FROM ledger WHERE run = $1", [run]);
        assert.deepEqual(inTx, [], "no idle connection of the pool is left in a transaction");
        assert.equal(
          n,
          0,
          "the next checkout does not run inside the released handler's transaction",
        );
        assert.deepEqual(stored, [], "a released handler's write is never committed");
      } finally {
        await pool.close();
      }
    }),
  );

  // Shrunk by the property (PGDBPOOL_FC_SEED=3, failing at its 25th program):
  //   config {"autoSize":2,"txSize":2,"autoRole":"any","validateAfterMs":0,
  //           "healthCheckIntervalMs":200,"releaseBeforeClose":false}
  //   [{"op":"write","slot":0,"then":"none","wait":true},{"op":"fail","slot":0,"wait":false},
  //    {"op":"write","slot":3,"then":"release","wait":false},{"op":"settle"},
  //    {"op":"rollback","slot":0,"wait":false}]
  //   -> "settle: server not tidy: 2 sessions (primary/…:idle, primary/…:idle in transaction),
  //       open 2"
  // Reduced by hand to its core (the first step only lets the pool learn the primary):
  it(
    "program: a transaction handler released with its first write in flight",
    serial(async () => {
      await runProgram(SHRUNK_CONFIG, [
        { op: "oneshot", group: "tx", write: false, wait: true },
        { op: "write", slot: 3, then: "release", wait: false },
      ]);
    }),
  );

  // Shrunk by the property in CI (Bun, PostgreSQL 15, seed 20261129, its 24th program), failing
  // with an unhandled "write CONNECTION_DESTROYED" from postgres.js's terminate().
  it(
    "program: a one-shot and a handler's read while a backend of the primary is killed",
    serial(async () => {
      await runProgram(SHRUNK_CONFIG, [
        { op: "oneshot", group: "auto", write: false, wait: false },
        { op: "sleep", ms: 0 },
        { op: "read", slot: 0, sleepMs: 0, wait: false },
        { op: "kill", server: "primary", all: false },
      ]);
    }),
  );

  // Found with health_check_interval_ms: 0 (the edge entry's setting: "health checks run on
  // demand"; PGDBPOOL_FC_AVOID=startup PGDBPOOL_FC_SEED=31 PGDBPOOL_FC_RUNS=80 hits it). A statement on a connection whose host goes silent never settles: statements have
  // no deadline of their own, and with no background probe nothing ever marks the host down
  // and ends its connections (TCP keep-alive never fires: the host's kernel still answers).
  it(
    "program: a statement on a host that goes silent, with background probes off",
    serial(async () => {
      await runProgram({
        autoSize: 2,
        txSize: 2,
        autoRole: "primary",
        validateAfterMs: 1000,
        healthCheckIntervalMs: 0,
        releaseBeforeClose: true,
      }, [
        { op: "read", slot: 0, sleepMs: 0, wait: true },
        { op: "blackhole" },
        { op: "read", slot: 0, sleepMs: 0, wait: true },
      ]);
    }),
  );

  // Found as an unhandled PostgresError 57P01 (Deno fails the test; Node and Deno programs exit
  // on one). postgres.js fetches array types right after start-up (fetch_types: true for pooled
  // sessions) from `return fetchArrayTypes()` inside its ReadyForQuery handler: nobody handles
  // that promise. A backend terminated (or a connection reset) after authentication but before
  // the type query is answered rejects it unhandled. With 57P01, postgres.js also reconnects
  // (its close handler returns reconnect() while the first query is still queued, without
  // calling onclose), so the driver's "never reconnects" guard is bypassed, and the caller's
  // statement, never sent, is then reported with outcome "unknown".
  for (const fault of ["terminated", "reset", "closed"] as const) {
    it(
      `a session ${fault} while the driver fetches array types at connect`,
      serial(async () => {
        strays.length = 0;
        const app = `prop_types_${fault}`;
        // A proxy of its own: a runtime that fails a test on an unhandled rejection may start the
        // next one while this one's body still runs.
        const px = await startProxy(cluster.primary);
        const pool = new Pool({
          db: [endpointAt(px.host, px.port, 10)],
          groups: { g: { connection_count: 1 } },
          application_name: app,
          health_check_interval_ms: 0,
          close_timeout_ms: 0,
        });
        // Every chunk through the proxy waits 100 ms: start-up is over on the server well before
        // the client has asked for the types.
        px.delayMs = 100;
        try {
          const q = pool.query("g", "SELECT 1 AS one");
          q.catch(() => {});
          // terminated: as soon as authentication is over (the FATAL follows ReadyForQuery in
          // the proxy's queue); reset: once the type query has reached the server (the client
          // is waiting for its answer); closed: likewise.
          const pid = await waitFor(async () => {
            const rows = await cluster.primary.query(
              `SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle'
               AND ($2 OR query LIKE '%typarray%')`,
              [app, fault === "terminated"],
            );
            return rows[0]?.pid as number | undefined;
          }, { timeoutMs: 10_000, intervalMs: 5, message: "the pool's session in start-up" });
          if (fault === "terminated") {
            await cluster.primary.query("SELECT pg_terminate_backend($1)", [pid]);
          } else if (fault === "reset") {
            px.dropAll();
          } else {
            // The pool itself ends the session (close(); reroute and discards do the same).
            const closed = pool.close();
            closed.catch(() => {});
          }
          const r = await settleWithin(q, OP_DEADLINE_MS);
          px.delayMs = 0;
          await sleep(300);
          assertSettledUnsent(r);
        } finally {
          px.delayMs = 0;
          await pool.close();
          await px.close();
          strays.length = 0;
        }
        assert.equal(await cluster.countConnections({ applicationName: app }), 0);
      }),
    );
  }

  // Found by the property under Bun (seed 20261129) as an unhandled "write CONNECTION_DESTROYED"
  // from postgres.js's terminate(), after the fix below. A backend killed right after start-up
  // sends its FATAL in the same TCP segment as the start-up reply. postgres.js reads
  // ReadyForQuery and creates its type query (sent a microtask later), then the FATAL, with no
  // statement under way: it rejects the caller's first statement, still queued. The driver took
  // that rejection as the end of the type fetch, so when the session was ended (or closed) the
  // type query, sent meanwhile, was rejected by postgres.js with nobody to hear it.
  it(
    "a backend killed right after start-up, its FATAL in the start-up reply's segment",
    serial(async () => {
      strays.length = 0;
      const app = "prop_types_fatal_with_startup";
      const px = await startProxy(cluster.primary);
      const pool = new Pool({
        db: [endpointAt(px.host, px.port, 10)],
        groups: { g: { connection_count: 1 } },
        application_name: app,
        health_check_interval_ms: 0,
        close_timeout_ms: 0,
      });
      // The start-up reply (it ends with ReadyForQuery) is held: the partition starts there.
      px.holdServerChunk = (chunk) => {
        const n = chunk.length;
        return n >= 6 && chunk[n - 6] === 0x5a && chunk[n - 2] === 5;
      };
      try {
        const q = pool.query("g", "SELECT 1 AS one");
        q.catch(() => {});
        await waitFor(() => px.mode === "blackhole", { message: "the start-up reply held" });
        px.holdServerChunk = undefined;
        const [{ pid }] = await cluster.primary.query(
          "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
          [app],
        );
        await cluster.primary.query("SELECT pg_terminate_backend($1)", [pid]);
        await waitFor(
          async () => (await cluster.countConnections({ applicationName: app })) === 0,
          {
            message: "the backend gone",
          },
        );
        // The FATAL and the close are held behind the start-up reply: all arrive together.
        px.mode = "pass";
        const r = await settleWithin(q, OP_DEADLINE_MS);
        await pool.close();
        await sleep(300);
        assertSettledUnsent(r);
      } finally {
        px.holdServerChunk = undefined;
        px.mode = "pass";
        await pool.close();
        await px.close();
        strays.length = 0;
      }
    }),
  );

  // Found by the property under Bun (CI, seed 20261129) as an unhandled "write
  // CONNECTION_DESTROYED" from postgres.js's terminate(): the pool ended a session whose
  // start-up reply had reached the client's socket but was not read yet. postgres.js's end()
  // destroys the connection one timer tick later; in between it read the reply, saw start-up
  // finish and sent its type query, and destroy() then rejected that query, whose promise nobody
  // holds. The proxy ends the session at exactly that moment: right after handing the client the
  // chunk that finishes start-up (ReadyForQuery), in the same callback.
  for (const types of ["to fetch", "known"] as const) {
    it(
      `a session ended while its start-up reply waits unread (array types ${types})`,
      serial(async () => {
        strays.length = 0;
        const app = `prop_ended_unread_${types === "known" ? "known" : "fetch"}`;
        const run = 1_000_000 + runCounter++;
        const px = await startProxy(cluster.primary);
        const pool = new Pool({
          db: [endpointAt(px.host, px.port, 10)],
          groups: { g: { connection_count: 2 } },
          application_name: app,
          health_check_interval_ms: 0,
          close_timeout_ms: 0,
        });
        // A session of its own holds the first connection: the statement below opens a second,
        // which starts with the array types the first one learnt.
        const first = types === "known" ? pool.handler("g") : undefined;
        if (first !== undefined) await first.query("SELECT 1");
        // Delivered from the proxy's timer, so the client reads the chunk in a later callback.
        px.delayMs = 20;
        let closing: Promise<void> | undefined;
        px.onServerChunk = (chunk) => {
          const n = chunk.length;
          // ReadyForQuery ('Z', length 5, status) ends the chunk: start-up is over on the server.
          if (closing === undefined && n >= 6 && chunk[n - 6] === 0x5a && chunk[n - 2] === 5) {
            closing = pool.close();
          }
        };
        try {
          // Without parameters: postgres.js sends it whole at once (no describe round trip).
          const q = pool.query("g", INSERT.replace("$1, $2, $3", `${run}, 1, 1`));
          q.catch(() => {});
          const r = await settleWithin(q, OP_DEADLINE_MS);
          await waitFor(() => closing !== undefined, { message: "start-up finished" });
          await closing;
          await sleep(300);
          const stored = await cluster.primary.query("SELECT w FROM ledger WHERE run = $1", [run]);
          assertSettledUnsent(r);
          if (!r.ok) assert.deepEqual(stored, [], `a statement reported as never sent did not run`);
        } finally {
          px.onServerChunk = undefined;
          px.delayMs = 0;
          first?.release();
          await pool.close();
          await px.close();
          strays.length = 0;
        }
        await waitFor(
          async () => (await cluster.countConnections({ applicationName: app })) === 0,
          { message: "server connections left" },
        );
      }),
    );
  }
});

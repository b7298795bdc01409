/**
 * `npm run demo`: the pool's main job, live. Starts a throw-away primary and two streaming
 * replicas (embedded PostgreSQL from npm), runs a small web-shaped workload through one pool,
 * and while it runs:
 *
 *  1. pauses WAL replay on a replica: the pool stops reading from it, and reads from it again
 *     once it has caught up;
 *  2. stops the primary and promotes the other replica: the pool follows by itself;
 *  3. brings the old primary back as a replica of the new one: the pool reads from it again.
 *
 * It prints a timeline (`fault` lines: what the demo does to the servers; `pool` lines: the
 * pool's own events; `app` lines: what the workload saw), checks that every acknowledged write
 * is on every server at the end, prints a summary, and stops every server it started, also on
 * an error, Ctrl-C or SIGTERM (then exiting with 128 + the signal's number: 130, 143). Exit
 * code 0 only when nothing acknowledged was lost, every read-your-writes read saw its write,
 * every kind of work succeeded at times and no error came up that the faults do not explain.
 */
import { constants } from "node:os";
import process from "node:process";
import postgres from "postgres";
import { type PgCluster, type PgServer, startCluster } from "../tests/harness/cluster.ts";
import { processesIn } from "../tests/harness/exec.ts";
import {
  followPrimary,
  pauseReplay,
  rejoinAsStandby,
  resumeReplay,
  waitReplayed,
  waitStreaming,
} from "../tests/harness/faults.ts";
import {
  Pool,
  PoolError,
  type PoolEvent,
  type PoolEventDetail,
  type PoolEventType,
  SessionLostError,
} from "../mod.ts";

const T0 = performance.now();
/** Largest lag the "read" group accepts. */
const LAG_LIMIT_MS = 500;
/** Pause between iterations of each loop: keeps the output readable and the CPU mostly idle. */
const PACE_MS = 25;
/** Pause after a failed iteration: short, so the first write after a failover is seen at once. */
const RETRY_MS = 5;

// ---------------------------------------------------------------- timeline

const since = (t: number) => `+${((t - T0) / 1000).toFixed(3)}s`;
const ms = (d: number) => `${Math.round(d)} ms`;

function line(kind: "demo" | "fault" | "pool" | "app", text: string, at = performance.now()) {
  if (stopping !== undefined) return; // after Ctrl-C, only the teardown speaks
  console.log(`${since(at).padStart(8)}  ${kind.padEnd(5)}  ${text}`);
}

let starting: Promise<PgCluster> | undefined;
let cluster: PgCluster | undefined;
let pool: Pool | undefined;
const port = (s: PgServer) => `:${s.port}`;

// ---------------------------------------------------------------- clean-up, whatever happens

// Ctrl-C reaches this process (the servers run in their own sessions and never see it): stop
// them before leaving. A second signal while that runs changes nothing; cleanup is bounded.
let stopping: Promise<never> | undefined;
function onSignal(signal: "SIGINT" | "SIGTERM") {
  stopping ??= (async () => {
    console.log(`\n${signal}: stopping the servers`);
    running = false;
    // A cluster half-way through starting would race with its own teardown (a server could
    // come up after it): let the start finish, then stop it.
    await starting?.then((c) => (cluster = c), () => {});
    // Servers first: closing the pool could wait for statements in flight (close_timeout_ms).
    await cluster?.close().catch((err) => console.error(err));
    process.exit(128 + constants.signals[signal]); // as a shell reports a signal's end
  })();
}
process.on("SIGINT", () => onSignal("SIGINT"));
process.on("SIGTERM", () => onSignal("SIGTERM"));

// ---------------------------------------------------------------- workload

let running = true;
let nextId = 1;
const acked = { orders: [] as number[], lines: [] as number[] };
const stats = { statements: new Map<string, number>(), errors: new Map<string, number>() };
/** First error of each kind a failover does not explain (a bug, here or in the pool). */
const unexpected = new Map<string, unknown>();
const reads = new Map<number, number>(); // port -> reads it served

interface Sample {
  port: number;
  at: number;
}

/** Which server answered each read or write, and when; waits for the first answer of one. */
class AnswerLog {
  readonly samples: Sample[] = [];
  #watches: Array<{ port: number; after: number; resolve: (s: Sample) => void }> = [];

  add(port: number): void {
    const s = { port, at: performance.now() };
    this.samples.push(s);
    // Resolved right here, so a line printed by the waiter lands in timeline order.
    for (const w of [...this.#watches]) {
      if (w.port !== port || s.at < w.after) continue;
      this.#watches.splice(this.#watches.indexOf(w), 1);
      w.resolve(s);
    }
  }

  /** The first answer from `port` at or after `after`, or undefined after `timeoutMs`. */
  first(port: number, after: number, timeoutMs: number): Promise<Sample | undefined> {
    const seen = this.samples.find((s) => s.port === port && s.at >= after);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve) => {
      const w = { port, after, resolve };
      this.#watches.push(w);
      setTimeout(() => {
        const i = this.#watches.indexOf(w);
        if (i < 0) return;
        this.#watches.splice(i, 1);
        resolve(undefined);
      }, timeoutMs);
    });
  }

  count(port: number, from: number, to = Infinity): number {
    return this.samples.filter((s) => s.port === port && s.at >= from && s.at < to).length;
  }
}
const readLog = new AnswerLog();
const writeLog = new AnswerLog();
const ryw = { ok: 0, stale: 0, onReplica: 0, onPrimary: 0 };

const count = (m: Map<string, number>, k: string, n = 1) => m.set(k, (m.get(k) ?? 0) + n);
const sleep = (t: number) => new Promise((r) => setTimeout(r, t));

/** Errors a stopped primary, a promotion and restarts explain: the pool's own, the servers'
 * shutdown and connection codes, and the socket errors of connections that went away. */
function explained(err: unknown): boolean {
  if (err instanceof PoolError) return true;
  const code = (err as { code?: unknown })?.code;
  return typeof code === "string" && /^(57P0|08|25006|E[A-Z]+$|CONNECTION_)/.test(code);
}

function kindOf(err: unknown): string {
  if (err instanceof SessionLostError) return `${err.name} (outcome ${err.outcome})`;
  const e = err as { name?: string; code?: unknown };
  return typeof e?.code === "string" ? e.code : e?.name ?? String(err);
}

/** Runs `step` until the demo stops; an error is counted and the loop goes on after a pause. */
async function loop(step: () => Promise<void>) {
  while (running) {
    try {
      await step();
      await sleep(PACE_MS);
    } catch (err) {
      if (!running) return;
      const kind = kindOf(err);
      count(stats.errors, kind);
      if (!explained(err) && !unexpected.has(kind)) unexpected.set(kind, err);
      await sleep(RETRY_MS);
    }
  }
}

/** "Place order" with one autocommit statement on the `write` group. */
async function placeOrder(p: Pool) {
  const id = nextId++;
  const [row] = await p.query(
    "write",
    "INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3) RETURNING inet_server_port() AS port",
    [id, id % 50, 100 + (id % 900)],
  );
  count(stats.statements, "write");
  acked.orders.push(id);
  writeLog.add(row.port);
}

/** "Checkout": an order and its line in one transaction, then the confirmation page reads it
 * back through the `read` group with the commit's read-your-writes token. */
async function checkout(p: Pool) {
  const id = nextId++;
  let token: string | undefined;
  {
    await using db = p.handler("write_tx");
    const [row] = await db.query(
      "INSERT INTO orders (id, customer, total_cents) VALUES ($1, $2, $3) RETURNING inet_server_port() AS port",
      [id, id % 50, 2500],
    );
    await db.query("INSERT INTO order_lines (order_id, sku, qty) VALUES ($1, $2, $3)", [
      id,
      "sku-7",
      2,
    ]);
    token = await db.commit();
    count(stats.statements, "write_tx", 3);
    acked.orders.push(id);
    acked.lines.push(id);
    writeLog.add(row.port);
  }
  await using db = p.handler("read", { after: token });
  const [row] = await db.query(
    "SELECT count(*)::int AS n, pg_is_in_recovery() AS replica FROM order_lines WHERE order_id = $1",
    [id],
  );
  count(stats.statements, "read (after token)");
  if (row.n === 1) ryw.ok++;
  else ryw.stale++;
  if (row.replica) ryw.onReplica++;
  else ryw.onPrimary++;
}

/** "Order history" page: a read on the `read` group (replicas within the lag limit). */
async function history(p: Pool) {
  const [row] = await p.query(
    "read",
    "SELECT count(*)::int AS n, inet_server_port() AS port FROM orders WHERE customer = $1",
    [Math.floor(Math.random() * 50)],
  );
  count(stats.statements, "read");
  reads.set(row.port, (reads.get(row.port) ?? 0) + 1);
  readLog.add(row.port);
}

// ---------------------------------------------------------------- pool events

interface Seen {
  type: PoolEventType;
  at: number;
  detail: PoolEventDetail;
}
const events: Seen[] = [];
const errorLines = new Set<string>();
let connectionErrors = 0;

function listen(p: Pool) {
  const types: PoolEventType[] = [
    "endpointdown",
    "endpointup",
    "rolechange",
    "acquiretimeout",
    "connectionerror",
    "replicalagging",
    "replicacaughtup",
  ];
  for (const type of types) {
    p.addEventListener(type, (e) => {
      const detail = (e as PoolEvent).detail;
      const at = performance.now();
      events.push({ type, at, detail });
      const ep = detail.endpoint ? `:${detail.endpoint.port}` : "";
      const lag = detail.lag_ms === undefined ? "" : `lag ${ms(detail.lag_ms)}`;
      switch (type) {
        case "rolechange":
          return line("pool", `rolechange ${ep} ${detail.from} -> ${detail.to}`, at);
        case "endpointdown":
          return line("pool", `endpointdown ${ep} (${detail.reason})`, at);
        case "endpointup":
          return line("pool", `endpointup ${ep}`, at);
        case "replicalagging":
          return line(
            "pool",
            `replicalagging: ${ep} excluded from "${detail.group}" (${lag} > ${ms(LAG_LIMIT_MS)})`,
            at,
          );
        case "replicacaughtup":
          return line("pool", `replicacaughtup: ${ep} back in "${detail.group}" (${lag})`, at);
        case "connectionerror": {
          // One line per endpoint and reason: a failover makes every open connection fail.
          connectionErrors++;
          const key = `${ep} ${detail.reason}`;
          if (errorLines.has(key)) return;
          errorLines.add(key);
          return line("pool", `connectionerror ${ep} in "${detail.group}" (${detail.reason})`, at);
        }
        default:
          return line("pool", `${type} ${detail.group ?? ""}`, at);
      }
    });
  }
}

const firstEvent = (type: PoolEventType, port: number, after: number) =>
  events.find((e) => e.type === type && e.detail.endpoint?.port === port && e.at >= after);

/** Polls until `fn` is truthy or `timeoutMs` passed; resolves to whether it became truthy. */
async function until(fn: () => boolean | Promise<boolean>, timeoutMs: number, every = 10) {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (await fn()) return true;
    await sleep(every);
  }
  return false;
}

/** The pool's first `type` event about `port` at or after `after`, waiting up to `timeoutMs`. */
async function nextEvent(type: PoolEventType, port: number, after: number, timeoutMs: number) {
  await until(() => firstEvent(type, port, after) !== undefined, timeoutMs);
  return firstEvent(type, port, after);
}

// ---------------------------------------------------------------- the run

async function main(): Promise<number> {
  console.log(
    "pgdbpool demo: a primary and two replicas, a workload through one pool, and faults while " +
      "it runs.\nfault = what the demo does to the servers, pool = the pool's own events, " +
      "app = what the workload saw.\n",
  );
  line("demo", "starting a primary and two streaming replicas (embedded PostgreSQL)");
  starting = startCluster({ replicas: 2 });
  cluster = await starting;
  const c = cluster;
  const [primary, lagger, target] = c.servers; // lagger: paused replica; target: promoted
  line(
    "demo",
    `PostgreSQL ${c.version}: primary ${port(primary)}, replicas ${port(lagger)} ${port(target)}`,
  );
  line("demo", `data in ${c.dir}`);
  await primary.query(`CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL,
    total_cents int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`);
  await primary.query(`CREATE TABLE order_lines (order_id bigint NOT NULL REFERENCES orders,
    sku text NOT NULL, qty int NOT NULL)`);
  await c.waitForReplication();

  // Default health checks (every 1 s); roles are detected, never configured.
  pool = new Pool({
    db: c.endpoints(),
    groups: {
      write: { connection_count: 2, role: "primary" },
      write_tx: { connection_count: 2, role: "primary", autocommit: false },
      read: { connection_count: 4, role: "replica", max_replica_lag_ms: LAG_LIMIT_MS },
    },
    application_name: "pgdbpool-demo",
  });
  const p = pool;
  listen(p);
  const loops = [
    ...Array.from({ length: 2 }, () => loop(() => placeOrder(p))),
    ...Array.from({ length: 2 }, () => loop(() => checkout(p))),
    ...Array.from({ length: 3 }, () => loop(() => history(p))),
  ];
  line("demo", `workload: 2 loops placing orders on "write" (autocommit)`);
  line("demo", `          2 checkouts on "write_tx" (transaction), each read back with its token`);
  line("demo", `          3 readers on "read" (replicas lagging ≤ ${ms(LAG_LIMIT_MS)})`);
  const summary: Array<[string, string]> = [];
  try {
    // Both replicas serve reads before anything happens.
    await Promise.all([readLog.first(lagger.port, 0, 5000), readLog.first(target.port, 0, 5000)]);
    await sleep(1000);

    // 1. Replay paused on one replica: its lag grows with every commit it does not apply, and
    //    the pool leaves it out of "read" once a health check sees the lag over the limit.
    await pauseReplay(lagger);
    const pausedAt = performance.now();
    line("fault", `replay paused on replica ${port(lagger)} (WAL still arrives, is not applied)`);
    // A health check every second: the lag is seen over the limit within about 1.5 s.
    const excluded = await nextEvent("replicalagging", lagger.port, pausedAt, 6000);
    await sleep(1500); // reads go on, on the other replica
    const servedWhileOut = excluded && readLog.count(lagger.port, excluded.at + 50);
    await resumeReplay(lagger);
    const resumedAt = performance.now();
    line("fault", `replay resumed on replica ${port(lagger)}`);
    if (excluded) {
      line(
        "app",
        `reads while ${port(lagger)} was excluded: ${servedWhileOut} on it, ` +
          `${readLog.count(target.port, excluded.at + 50, resumedAt)} on ${port(target)}`,
      );
    }
    const readBack = readLog.first(lagger.port, resumedAt, 6000).then((s) => {
      if (s) line("app", `reads reach ${port(lagger)} again`, s.at);
      return s;
    });
    const readmitted = await nextEvent("replicacaughtup", lagger.port, resumedAt, 6000);
    const firstReadBack = await readBack;
    summary.push([
      "lagging replica excluded",
      excluded
        ? `${ms(excluded.at - pausedAt)} after replay paused`
        : "no replicalagging event within 6 s",
    ]);
    summary.push([
      "... readmitted",
      readmitted
        ? `${ms(readmitted.at - resumedAt)} after replay resumed` +
          (firstReadBack ? `, reads on it ${ms(firstReadBack.at - resumedAt)} after` : "")
        : "no replicacaughtup event within 6 s",
    ]);
    await sleep(1000);

    // 2. Failover: the primary stops, the other replica is promoted, the pool follows.
    // A connection of the demo's own watches the promotion from outside the pool: the moment
    // the new primary accepts writes is the reference for how fast the pool follows.
    const watcher = postgres({
      host: target.host,
      port: target.port,
      user: c.user,
      pass: c.password,
      database: c.database,
      max: 1,
      fetch_types: false,
      onnotice: () => {},
      connection: { application_name: "pgdbpool-demo-watch" },
    });
    let stoppedAt: number | undefined;
    let promotedAt: number | undefined;
    // The promotion's moment: whoever saw it first, the demo's watcher or the pool.
    const promotionAt = () =>
      Math.min(
        promotedAt ?? Infinity,
        firstEvent("rolechange", target.port, stoppedAt ?? Infinity)?.at ?? Infinity,
      );
    let firstWrite: Promise<Sample | undefined>;
    try {
      await watcher`SELECT 1`;
      line("fault", `stopping the primary ${port(primary)} (pg_ctl stop -m fast)`);
      const stopCalledAt = performance.now();
      // Writes cannot succeed on the replica before its promotion: the first one after the stop
      // on it is the first write on the new primary.
      firstWrite = writeLog.first(target.port, stopCalledAt, 20_000).then((s) => {
        if (s) {
          line(
            "app",
            `first write on the new primary ${port(target)}, ${
              ms(s.at - promotionAt())
            } after the promotion`,
            s.at,
          );
        }
        return s;
      });
      await primary.stop("fast");
      stoppedAt = performance.now();
      line("fault", `primary ${port(primary)} stopped`);
      line("fault", `promoting replica ${port(target)} (pg_ctl promote)`);
      const promoting = target.promote();
      await until(
        async () => {
          const [{ r }] = await watcher`SELECT pg_is_in_recovery() AS r`;
          return r === false;
        },
        30_000,
        2,
      );
      promotedAt = performance.now();
      line("fault", `${port(target)} is out of recovery: the promotion is done`, promotedAt);
      await promoting;
    } finally {
      await watcher.end({ timeout: 1 });
    }
    await followPrimary(c, lagger, target);
    line("fault", `replica ${port(lagger)} pointed at the new primary ${port(target)}`);
    const written = await firstWrite;
    const roleEvent = firstEvent("rolechange", target.port, stoppedAt);
    const promoted = promotionAt();
    summary.push([
      "promotion followed",
      written
        ? `first write ${ms(written.at - promoted)} after the promotion` +
          (roleEvent ? ` (rolechange event after ${ms(roleEvent.at - promoted)})` : "")
        : "no write reached the new primary within 20 s",
    ]);
    // From the last write the old primary acknowledged to the first on the new one: the stop,
    // the promotion, and the pool finding the new primary.
    const lastOld = writeLog.samples.findLast((w) => w.port === primary.port);
    // Rounded parts first, so the sum shown adds up.
    const parts = lastOld && written
      ? [stoppedAt - lastOld.at, promoted - stoppedAt, written.at - promoted].map(Math.round)
      : undefined;
    summary.push([
      "writes unavailable",
      parts
        ? `${ms(parts[0] + parts[1] + parts[2])} = stop ${ms(parts[0])} + promotion ${
          ms(parts[1])
        } + pool ${ms(parts[2])}`
        : "-",
    ]);

    // 3. The old primary comes back as a replica of the new one.
    await sleep(500);
    line("fault", `restarting the old primary ${port(primary)} as a replica of ${port(target)}`);
    const restartAt = performance.now();
    const rejoinRead = readLog.first(primary.port, restartAt, 15_000).then((s) => {
      if (s) line("app", `reads reach the rejoined replica ${port(primary)}`, s.at);
      return s;
    });
    await rejoinAsStandby(c, primary, target);
    line("fault", `${port(primary)} accepts connections again, in recovery`);
    await waitStreaming(target, [lagger, primary], 15_000);
    line("fault", `replicas ${port(lagger)} and ${port(primary)} stream from ${port(target)}`);
    const rejoined = await rejoinRead;
    summary.push([
      "rejoined old primary",
      rejoined
        ? `serving reads ${ms(rejoined.at - restartAt)} after its restart began`
        : "no read reached it",
    ]);
    await sleep(1000);
  } finally {
    running = false;
    await Promise.race([Promise.all(loops), sleep(3000)]);
  }
  line("demo", "workload stopped");

  // Every acknowledged write must be on the new primary, and (once replayed) on both replicas.
  await waitReplayed(target, [lagger, c.primary], 10_000);
  const check = `SELECT
      (SELECT count(*) FROM unnest($1::bigint[]) AS a(id) WHERE NOT EXISTS
        (SELECT 1 FROM orders o WHERE o.id = a.id))::int AS orders,
      (SELECT count(*) FROM unnest($2::bigint[]) AS a(id) WHERE NOT EXISTS
        (SELECT 1 FROM order_lines l WHERE l.order_id = a.id))::int AS lines`;
  const missing = await Promise.all(
    [target, lagger, c.primary].map(async (s) => {
      // Array literals as text: the harness's admin client does not serialise arrays.
      const [m] = await s.query(check, [`{${acked.orders}}`, `{${acked.lines}}`]);
      return { s, lost: m.orders + m.lines };
    }),
  );
  const lost = Math.max(...missing.map((m) => m.lost));
  line(
    "demo",
    `checked ${acked.orders.length + acked.lines.length} acknowledged rows on ${
      missing.map((m) => `${port(m.s)} (${m.lost} missing)`).join(", ")
    }`,
  );

  const statements = [...stats.statements.values()].reduce((a, b) => a + b, 0);
  const errors = [...stats.errors.values()].reduce((a, b) => a + b, 0);
  const byGroup = ["write", "write_tx", "read", "read (after token)"]
    .map((k) => `${k} ${stats.statements.get(k) ?? 0}`).join(", ");
  const byKind = [...stats.errors].sort((a, b) => b[1] - a[1]).map(([k, v]) => `${k} ${v}`);
  const readsBy = [...reads].map(([k, v]) => `:${k} ${v}`).join(", ");
  const rows: Array<[string, string]> = [
    ["statements", `${statements} (${byGroup})`],
    ["errors", errors === 0 ? "0" : `${errors}: ${byKind.join(", ")}`],
    ["connectionerror events", String(connectionErrors)],
    ["acknowledged writes", `${acked.orders.length} orders (${acked.lines.length} in checkouts)`],
    ["acknowledged writes lost", String(lost)],
    [
      "read-your-writes reads",
      `${ryw.ok + ryw.stale}, ${ryw.stale} without their write (${ryw.onReplica} on a replica, ` +
      `${ryw.onPrimary} fell back to the primary)`,
    ],
    ["reads by server", readsBy],
    ...summary,
  ];
  const width = Math.max(...rows.map(([k]) => k.length));
  console.log("\nsummary");
  for (const [k, v] of rows) console.log(`  ${k.padEnd(width)}  ${v}`);
  for (const [kind, err] of unexpected) console.error(`\nunexpected error (${kind}):`, err);
  const idle = ["write", "write_tx", "read", "read (after token)"].filter((k) =>
    !stats.statements.get(k)
  );
  if (idle.length > 0) console.error(`\nno statement succeeded in: ${idle.join(", ")}`);
  return lost === 0 && ryw.stale === 0 && unexpected.size === 0 && idle.length === 0 ? 0 : 1;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  // After a signal, failures are the servers going away under the demo: not news.
  if (stopping === undefined) console.error("\ndemo failed:", err);
} finally {
  running = false;
  await pool?.close().catch((err) => console.error("closing the pool:", err));
  const dir = cluster?.dir;
  await cluster?.close().catch((err) => {
    console.error("stopping the servers:", err);
    code = 1;
  });
  const left = dir === undefined ? [] : processesIn(dir) ?? [];
  if (stopping === undefined) {
    console.log(
      `\n${left.length === 0 ? "all servers stopped, data deleted" : `still running: ${left}`}` +
        ` (${((performance.now() - T0) / 1000).toFixed(1)} s in all)`,
    );
  }
}
if (stopping !== undefined) await stopping; // the signal handler exits
process.exit(code);

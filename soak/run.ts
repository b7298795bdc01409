// One soak run: a fresh cluster (primary + two streaming replicas, one of them behind a TCP
// proxy), a pool with write/auto/read/pread groups, concurrent workers, a fault loop, then the
// checks. Everything started here is torn down here, also on failure.
import { randomBytes } from "node:crypto";
import process from "node:process";
import { type PgCluster, startCluster, testDriver } from "../tests/harness/cluster.ts";
import { createLoginRole, currentPrimary } from "../tests/harness/faults.ts";
import { startProxy, type TcpProxy } from "../tests/harness/proxy.ts";
import { sleep, waitFor } from "../tests/harness/wait.ts";
import { Pool } from "../mod.ts";
import {
  checkHeap,
  checkNoConnections,
  checkWrites,
  describeError,
  installGlobalHooks,
  StatsWatch,
  Violations,
  type ViolationSummary,
  type WriteFigures,
} from "./checks.ts";
import { type FaultContext, restoreAll, runFaults } from "./faults.ts";
import { Ledger } from "./ledger.ts";
import { Counters, HeapMonitor, LoopLag } from "./metrics.ts";
import { Rng } from "./rng.ts";
import {
  type GroupName,
  newFigures,
  type OpFigures,
  runOp,
  statementTimeout,
  worker,
  type WorkloadContext,
} from "./workload.ts";

/** Options of {@link runSoak}. */
export interface SoakOptions {
  /** Length of the workload phase in seconds (faults stop a little before its end). */
  seconds: number;
  /** Concurrent workers (default 24). */
  workers?: number;
  /** Random seed for the fault schedule and the workload mix (default: random). */
  seed?: number;
  /** Upper bound of the random pause between a worker's operations (default 10 ms). */
  thinkMs?: number;
  /** Progress lines (default: stderr). */
  log?: (line: string) => void;
}

/** Everything a run measured; JSON-ready. */
export interface SoakReport {
  runtime: string;
  postgres: number;
  seed: number;
  seconds: number;
  workers: number;
  wall_s: number;
  ops: Record<string, OpFigures & { p50_ms: number; p99_ms: number; max_ms: number }>;
  faults: Record<string, number>;
  errors: Record<string, number>;
  ryw_checks: Record<string, number>;
  writes: WriteFigures | null;
  heap: { baseline_mb: number | null; end_mb: number | null; forced_gc: boolean };
  event_loop_worst_stall_ms: number;
  connections_after_close: number | null;
  /** Largest number of connections each group had open at once (sampled), with its size. */
  max_open: Record<string, { open: number; size: number }>;
  violations: ViolationSummary[];
  /** Problems of the soak or the machine (a fault that could not be applied or undone). */
  soak_errors: string[];
  ok: boolean;
}

/** Name and version of the current runtime. */
export function runtimeName(): string {
  const g = globalThis as { Deno?: { version: { deno: string } }; Bun?: { version: string } };
  if (g.Deno) return `deno ${g.Deno.version.deno}`;
  if (g.Bun) return `bun ${g.Bun.version}${testDriver().driver === "bun" ? " (native driver)" : ""}`;
  return `node ${process.versions.node}`;
}

const GROUP_TIMEOUTS: Record<GroupName, number> = {
  write: 1500,
  auto: 1500,
  read: 1500,
  pread: 1500,
};

const ROLE = "soak_pool";

/** Runs one soak and returns its report (never throws for pool misbehaviour: see `violations`). */
export async function runSoak(opts: SoakOptions): Promise<SoakReport> {
  const t0 = performance.now();
  const seed = opts.seed ?? (randomBytes(4).readUInt32BE(0) >>> 0);
  const workers = opts.workers ?? 24;
  const thinkMs = opts.thinkMs ?? 10;
  const log = opts.log ?? ((line: string) => console.error(`[soak ${elapsed(t0)}] ${line}`));
  const rng = new Rng(seed);
  const violations = new Violations(t0);
  const soakErrors: string[] = [];
  const lag = new LoopLag();
  const heap = new HeapMonitor();
  const faultCounts = new Counters();
  const figures = newFigures();
  const app = `soak-${runtimeName().split(" ")[0]}-${process.pid}`;
  let writes: WriteFigures | null = null;
  let leftConnections: number | null = null;
  let postgresVersion = 0;

  const uninstall = installGlobalHooks(violations);
  lag.start();
  heap.start();
  let cluster: PgCluster | undefined;
  let proxy: TcpProxy | undefined;
  let pool: Pool | undefined;
  let watch: StatsWatch | undefined;
  try {
    log(`seed ${seed}, ${workers} workers, ${opts.seconds} s, ${runtimeName()}`);
    cluster = await startCluster({ replicas: 2 });
    postgresVersion = cluster.version;
    const primary = cluster.primary;
    const password = randomBytes(12).toString("hex");
    await primary.query(
      `create table soak_writes (req int not null, checkout int not null, pid int not null,
         port int not null, kind text not null, at timestamptz not null default clock_timestamp())`,
    );
    await primary.query("create index on soak_writes (req)");
    await createLoginRole(primary, ROLE, password, [
      `grant pg_monitor to ${ROLE}`,
      `grant select, insert on soak_writes to ${ROLE}`,
    ]);
    await cluster.waitForReplication();
    const proxied = cluster.replicas[1];
    proxy = await startProxy(proxied);
    const endpoints = cluster.servers.map((s) => ({
      host: s === proxied ? proxy!.host : s.host,
      port: s === proxied ? proxy!.port : s.port,
      name: cluster!.database,
      user: ROLE,
      pass: password,
      connect_timeout: 2,
      ...testDriver(),
    }));
    log(
      `cluster up (PostgreSQL ${cluster.version}): ${
        cluster.servers.map((s) => `${s.name}:${s.port}`).join(", ")
      }; ${proxied.name} behind proxy :${proxy.port}`,
    );

    pool = new Pool({
      db: endpoints,
      groups: {
        write: {
          connection_count: 6,
          autocommit: false,
          role: "primary",
          acquire_timeout_ms: GROUP_TIMEOUTS.write,
        },
        auto: { connection_count: 4, role: "primary", acquire_timeout_ms: GROUP_TIMEOUTS.auto },
        read: {
          connection_count: 6,
          role: "replica",
          acquire_timeout_ms: GROUP_TIMEOUTS.read,
          max_replica_lag_ms: 3000,
          read_your_writes_timeout_ms: 500,
        },
        pread: {
          connection_count: 3,
          role: "prefer-replica",
          acquire_timeout_ms: GROUP_TIMEOUTS.pread,
          read_your_writes_timeout_ms: 300,
        },
      },
      health_check_interval_ms: 250,
      retry_backoff_max_ms: 1000,
      close_timeout_ms: 2000,
      application_name: app,
    });
    watch = new StatsWatch(pool, violations);
    watch.start();
    const ctx: WorkloadContext = {
      pool,
      ledger: new Ledger(),
      violations,
      lag,
      rng,
      ...figures,
      acquireTimeoutMs: GROUP_TIMEOUTS,
      opDeadlineMs: 30_000,
    };

    const start = performance.now();
    const endAt = start + opts.seconds * 1000;
    // Faults stop early enough to restore the cluster and prove the pool recovers.
    const calmMs = Math.min(15_000, Math.max(8_000, opts.seconds * 200));
    const faultsUntil = endAt - calmMs;
    let stopping = false;
    const running = Array.from({ length: workers }, () => worker(ctx, () => stopping, thinkMs));

    // Warm-up, then the heap baseline.
    await sleep(Math.min(10_000, Math.max(3_000, opts.seconds * 100)));
    heap.markBaseline();

    const faultCtx: FaultContext = {
      cluster,
      proxy,
      proxied,
      app,
      role: ROLE,
      rng,
      counts: faultCounts,
      log,
      stmtTimeoutBurst: async () => {
        await Promise.all(
          Array.from({ length: 6 }, () => runOp(ctx, "stmt-timeout", () => statementTimeout(ctx))),
        );
      },
    };
    const faults = await runFaults(faultCtx, () => performance.now() >= faultsUntil);
    soakErrors.push(...faults.errors);
    try {
      await restoreAll(faultCtx);
      log("faults over, cluster restored");
    } catch (err) {
      soakErrors.push(`restoring the cluster failed: ${describeError(err)}`);
    }

    // Recovery: with the cluster healthy again, each kind of checkout must work within 20 s.
    await recovered(pool, violations, log);

    const rest = endAt - performance.now();
    if (rest > 0) await sleep(rest);
    stopping = true;
    const drained = await Promise.race([
      Promise.all(running).then(() => true),
      sleep(ctx.opDeadlineMs + 5_000).then(() => false),
    ]);
    if (!drained) {
      violations.add("hang", "workers did not finish after the stop (see hang entries)");
    }
    heap.markEnd();
    checkHeap(heap, violations);

    watch.stop();
    const closing = pool.close();
    const closed = await Promise.race([closing.then(() => true), sleep(15_000).then(() => false)]);
    if (!closed) violations.add("close-hang", "pool.close() did not resolve within 15 s");
    const viaProxy = proxy;
    leftConnections = await checkNoConnections(
      cluster,
      app,
      violations,
      () => ` (client sockets still open through the proxy: ${viaProxy.connections})`,
    );

    const finalPrimary = await currentPrimary(cluster);
    writes = await checkWrites(finalPrimary, ctx.ledger, violations);
    const tally = ctx.ledger.tally();
    log(`final primary ${finalPrimary.name}; writes: ${JSON.stringify(tally)}`);
  } catch (err) {
    soakErrors.push(`soak aborted: ${describeError(err)}`);
  } finally {
    stopTimers(lag, heap);
    watch?.stop();
    if (pool && !pool.closed) await Promise.race([pool.close(), sleep(10_000)]).catch(() => {});
    await proxy?.close().catch(() => {});
    await cluster?.close().catch((err) => soakErrors.push(`cluster close: ${describeError(err)}`));
    uninstall();
  }

  const mb = (b: number | undefined) => b === undefined ? null : Math.round(b / 2 ** 17) / 8;
  const latency = figures.latency.summary();
  const ops: SoakReport["ops"] = {};
  for (const [kind, f] of [...figures.ops.entries()].sort((a, b) => a[0].localeCompare(b[0]))) {
    const l = latency[kind];
    ops[kind] = {
      ...f,
      p50_ms: l?.p50_ms ?? NaN,
      p99_ms: l?.p99_ms ?? NaN,
      max_ms: l?.max_ms ?? NaN,
    };
  }
  const list = violations.list();
  return {
    runtime: runtimeName(),
    postgres: postgresVersion,
    seed,
    seconds: opts.seconds,
    workers,
    wall_s: Math.round((performance.now() - t0) / 100) / 10,
    ops,
    faults: faultCounts.toJSON(),
    errors: figures.errors.toJSON(),
    ryw_checks: figures.ryw.toJSON(),
    writes,
    heap: { baseline_mb: mb(heap.baseline), end_mb: mb(heap.end), forced_gc: heap.forcedGc },
    event_loop_worst_stall_ms: Math.round(lag.worst),
    connections_after_close: leftConnections,
    max_open: watch?.maxOpen ?? {},
    violations: list,
    soak_errors: soakErrors,
    ok: list.length === 0 && soakErrors.length === 0,
  };
}

function stopTimers(lag: LoopLag, heap: HeapMonitor): void {
  lag.stop();
  heap.stop();
}

function elapsed(t0: number): string {
  return `${((performance.now() - t0) / 1000).toFixed(1)}s`;
}

/** After the faults: a write, a one-shot and a read must each succeed within 20 s. */
async function recovered(
  pool: Pool,
  violations: Violations,
  log: (l: string) => void,
): Promise<void> {
  const probes: Array<[string, () => Promise<unknown>]> = [
    ["write transaction", () => pool.transaction("write", (db) => db.query("SELECT 1"))],
    ["auto one-shot", () => pool.query("auto", "SELECT 1")],
    ["replica read", () => pool.query("read", "SELECT 1")],
    ["prefer-replica read", () => pool.query("pread", "SELECT 1")],
  ];
  const started = performance.now();
  for (const [what, probe] of probes) {
    let last: unknown;
    try {
      await waitFor(async () => {
        try {
          await probe();
          return true;
        } catch (err) {
          last = err;
          return false;
        }
      }, { timeoutMs: 20_000, intervalMs: 100 });
    } catch {
      violations.add(
        "no-recovery",
        `${what} still failing 20 s after the cluster was restored: ${describeError(last)}`,
      );
    }
  }
  log(`recovery probes done in ${Math.round(performance.now() - started)} ms`);
}

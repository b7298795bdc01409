// Fault injection for the soak, one fault at a time, each restored before the next: session
// kills (idle and in flight), replica restarts, replay pauses, failover with rejoin, a
// blackholed / refusing / slow replica behind the TCP proxy, a role connection limit and bursts
// of statement timeouts. Faults go through the harness (tests/harness/faults.ts).
import type { PgCluster, PgServer } from "../tests/harness/cluster.ts";
import {
  currentPrimary,
  failover,
  followPrimary,
  othersThan,
  pauseReplay,
  type PoolSession,
  poolSessions,
  rejoinAsStandby,
  resumeReplay,
  setConnectionLimit,
  terminate,
  waitReplayed,
  waitStreaming,
} from "../tests/harness/faults.ts";
import type { TcpProxy } from "../tests/harness/proxy.ts";
import { sleep, waitFor } from "../tests/harness/wait.ts";
import type { Counters } from "./metrics.ts";
import type { Rng } from "./rng.ts";

/** Fault kinds and their weights (each kind also comes up at least once per round). */
export const FAULT_WEIGHTS = {
  "terminate-idle": 3,
  "terminate-in-flight": 4,
  "replica-restart": 2,
  "replay-pause": 2,
  "failover": 2,
  "blackhole": 2,
  "refuse": 1,
  "delay": 2,
  "conn-limit": 2,
  "stmt-timeout": 2,
} as const;

/** One of the fault kinds. */
export type FaultKind = keyof typeof FAULT_WEIGHTS;

/** What faults act on. */
export interface FaultContext {
  readonly cluster: PgCluster;
  /** TCP proxy the pool reaches `proxied` through. */
  readonly proxy: TcpProxy;
  readonly proxied: PgServer;
  /** The pool's application_name (its sessions and its health probes). */
  readonly app: string;
  /** The pool's login role (not a superuser, so CONNECTION LIMIT applies). */
  readonly role: string;
  readonly rng: Rng;
  /** Faults applied, per kind. */
  readonly counts: Counters;
  /** Runs a burst of statement-timeout operations. */
  readonly stmtTimeoutBurst: () => Promise<void>;
  readonly log: (line: string) => void;
}

/** How the cluster is known to be healthy: one primary, every other server streaming from it. */
export async function healthy(cluster: PgCluster, timeoutMs = 30_000): Promise<PgServer> {
  const primary = await waitFor(() => currentPrimary(cluster), {
    timeoutMs,
    message: "exactly one primary",
  });
  const standbys = othersThan(cluster, primary);
  await waitStreaming(primary, standbys, timeoutMs);
  return primary;
}

/** Puts everything back: proxy passing, no delay, replay resumed, no connection limit, all streaming. */
export async function restoreAll(ctx: FaultContext, timeoutMs = 30_000): Promise<PgServer> {
  ctx.proxy.mode = "pass";
  ctx.proxy.delayMs = 0;
  const primary = await currentPrimary(ctx.cluster);
  for (const s of othersThan(ctx.cluster, primary)) {
    if (!s.isRunning()) await s.start();
    await resumeReplay(s);
  }
  await setConnectionLimit(primary, ctx.role, -1);
  await healthy(ctx.cluster, timeoutMs);
  await waitReplayed(primary, othersThan(ctx.cluster, primary), timeoutMs);
  return primary;
}

const hold = (ctx: FaultContext, min: number, max: number) => sleep(ctx.rng.int(min, max));

async function terminateIdle(ctx: FaultContext): Promise<string> {
  const sessions = await poolSessions(ctx.cluster, ctx.app);
  const chosen = ctx.rng.shuffle(sessions).slice(0, Math.max(1, Math.ceil(sessions.length / 3)));
  const done = await terminate(chosen);
  return `${done.length} of ${sessions.length} sessions`;
}

async function terminateInFlight(ctx: FaultContext): Promise<string> {
  // Wait (bounded) for sessions with a statement or transaction in progress, e.g. a pg_sleep.
  const busy: PoolSession[] = await waitFor<PoolSession[] | null>(async () => {
    const s = (await poolSessions(ctx.cluster, ctx.app)).filter((x) =>
      x.applicationName === ctx.app && x.state !== null && x.state !== "idle"
    );
    return s.length > 0 ? s : null;
  }, { timeoutMs: 3000, intervalMs: 5 }).then((s) => s ?? [], () => []);
  const done = await terminate(
    ctx.rng.shuffle(busy).slice(0, Math.max(1, Math.ceil(busy.length / 2))),
  );
  const what = [...new Set(done.map((d) => `${d.state}: ${d.query.slice(0, 40)}`))].slice(0, 3);
  return `${done.length} busy sessions (${what.join(" | ")})`;
}

async function replicaRestart(ctx: FaultContext): Promise<string> {
  const primary = await currentPrimary(ctx.cluster);
  const replica = ctx.rng.pick(othersThan(ctx.cluster, primary));
  const mode = ctx.rng.chance(0.5) ? "fast" : "immediate";
  await replica.stop(mode);
  try {
    await hold(ctx, 1000, 3000);
  } finally {
    await replica.start();
  }
  await waitStreaming(primary, [replica]);
  return `${replica.name} (${mode})`;
}

async function replayPause(ctx: FaultContext): Promise<string> {
  const primary = await currentPrimary(ctx.cluster);
  const replica = ctx.rng.pick(othersThan(ctx.cluster, primary));
  await pauseReplay(replica);
  try {
    await hold(ctx, 2000, 4000);
  } finally {
    await resumeReplay(replica);
  }
  return replica.name;
}

async function doFailover(ctx: FaultContext): Promise<string> {
  const primary = await healthy(ctx.cluster);
  const standbys = othersThan(ctx.cluster, primary);
  await waitReplayed(primary, standbys);
  const target = ctx.rng.pick(standbys);
  try {
    const t = await failover(ctx.cluster, primary, target);
    return `${primary.name} -> ${target.name} (stopped ${t.stopped} ms, promoted ${t.promoted} ms, ` +
      `rejoined ${t.rejoined} ms, streaming ${t.streaming} ms)`;
  } catch (err) {
    // Heal: whichever server is primary now, every other one follows it.
    const now = await currentPrimary(ctx.cluster).catch(() => undefined);
    if (now === undefined && !primary.isRunning()) {
      await primary.start(); // promotion failed before the old primary was rejoined
    } else if (now === target) {
      for (const s of othersThan(ctx.cluster, target)) {
        if (s === primary && !s.isRunning()) await rejoinAsStandby(ctx.cluster, s, target);
        else if (s.isRunning()) await followPrimary(ctx.cluster, s, target);
      }
    }
    throw err;
  }
}

async function proxyFault(ctx: FaultContext, mode: "blackhole" | "refuse"): Promise<string> {
  ctx.proxy.mode = mode;
  try {
    await hold(ctx, mode === "blackhole" ? 2000 : 1000, mode === "blackhole" ? 4000 : 2000);
  } finally {
    ctx.proxy.mode = "pass";
  }
  return ctx.proxied.name;
}

async function delay(ctx: FaultContext): Promise<string> {
  const ms = ctx.rng.int(50, 300);
  ctx.proxy.delayMs = ms;
  try {
    await hold(ctx, 2000, 4000);
  } finally {
    ctx.proxy.delayMs = 0;
  }
  return `${ctx.proxied.name} +${ms} ms per chunk`;
}

async function connLimit(ctx: FaultContext): Promise<string> {
  const primary = await currentPrimary(ctx.cluster);
  const limit = ctx.rng.int(1, 3);
  await setConnectionLimit(primary, ctx.role, limit);
  let killed = 0;
  try {
    // Make the pool reconnect into the limit: end some of its sessions.
    const sessions = await poolSessions(ctx.cluster, ctx.app);
    killed = (await terminate(ctx.rng.shuffle(sessions).slice(0, Math.ceil(sessions.length / 2))))
      .length;
    await hold(ctx, 2000, 3000);
  } finally {
    await setConnectionLimit(primary, ctx.role, -1);
  }
  await waitReplayed(primary, othersThan(ctx.cluster, primary));
  return `limit ${limit} on ${ctx.role}, ${killed} sessions ended`;
}

async function apply(ctx: FaultContext, kind: FaultKind): Promise<string> {
  switch (kind) {
    case "terminate-idle":
      return await terminateIdle(ctx);
    case "terminate-in-flight":
      return await terminateInFlight(ctx);
    case "replica-restart":
      return await replicaRestart(ctx);
    case "replay-pause":
      return await replayPause(ctx);
    case "failover":
      return await doFailover(ctx);
    case "blackhole":
    case "refuse":
      return await proxyFault(ctx, kind);
    case "delay":
      return await delay(ctx);
    case "conn-limit":
      return await connLimit(ctx);
    case "stmt-timeout":
      await ctx.stmtTimeoutBurst();
      return "burst";
  }
}

/**
 * Applies faults one after another, a random 0.5-2 s apart, until `stop()` says so. Kinds are
 * drawn from shuffled decks: the first holds every kind once, so a one-minute run sees each
 * kind; later ones add weighted extras. A fault that cannot be applied or restored is returned as an error (a problem of
 * the soak or the machine, not a pool violation), after which no further faults are applied.
 */
export async function runFaults(
  ctx: FaultContext,
  stop: () => boolean,
): Promise<{ errors: string[] }> {
  const errors: string[] = [];
  const kinds = Object.keys(FAULT_WEIGHTS) as FaultKind[];
  let deck: FaultKind[] = [];
  let round = 0;
  await sleep(ctx.rng.int(500, 1500));
  while (!stop()) {
    if (deck.length === 0) {
      // The first round holds each kind once; later rounds add weighted extras.
      const extras = round++ === 0 ? [] : kinds.map(() => ctx.rng.weighted(FAULT_WEIGHTS));
      deck = ctx.rng.shuffle([...kinds, ...extras]);
    }
    const kind = deck.pop()!;
    const started = performance.now();
    try {
      const what = await apply(ctx, kind);
      ctx.counts.add(kind);
      ctx.log(`fault ${kind}: ${what} (${Math.round(performance.now() - started)} ms)`);
    } catch (err) {
      const msg = `fault ${kind} failed: ${err instanceof Error ? err.message : String(err)}`;
      ctx.log(msg);
      errors.push(msg);
      break;
    }
    await sleep(ctx.rng.int(500, 2000));
  }
  return { errors };
}

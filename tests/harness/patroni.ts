// A Patroni HA lab: one etcd and three Patroni nodes of PostgreSQL on loopback, for tests that
// fail over the way production does (switchover through Patroni's REST API, a crashed leader,
// a node that rejoins after pg_rewind).
//
// Needs Debian's `patroni` (with `python3-etcd`), `etcd-server` and a PostgreSQL build with
// pg_rewind and pg_basebackup (Debian's postgresql-15); `.ci/run` installs them. As root,
// etcd, Patroni and PostgreSQL run as the harness's unprivileged server user (exec.ts).
//
// Everything lives in one directory under the per-process root (datadir.ts): every process
// started here has its working directory inside it, so close(), the exit hook and the reaping
// of stale roots by later runs all find and kill them by working directory.
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import {
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
} from "node:fs";
import { rm } from "node:fs/promises";
import { delimiter, join } from "node:path";
import process from "node:process";
import postgres from "postgres";
import { serverBinDir } from "./binaries.ts";
import {
  DATABASE,
  HOST,
  killAll,
  processRoot,
  track,
  untrack,
  USER as POOL_USER,
} from "./datadir.ts";
import { chownToServer, freePorts, pidAlive, processesIn, wrap, writeServerFile } from "./exec.ts";
import { HARNESS_APP } from "./server.ts";
import { sleep, waitFor } from "./wait.ts";

/**
 * Patroni's timing (global DCS settings). A leader that stops renewing its key loses it after
 * `ttl` seconds; members run their HA loop every `loop_wait` seconds; DCS and PostgreSQL calls
 * are retried for `retry_timeout` seconds. Patroni wants loop_wait + 2 * retry_timeout <= ttl.
 */
export const PATRONI_TIMING = { ttl: 8, loop_wait: 1, retry_timeout: 3 } as const;

const SUPERUSER = "postgres";
const REPLICATION_USER = "replicator";
const REWIND_USER = "rewinder";

export interface PatroniNode {
  /** Patroni member name: "node1", "node2", "node3" (also the walreceiver's application_name). */
  readonly name: string;
  readonly host: string;
  /** PostgreSQL port. */
  readonly port: number;
  /** Patroni REST API port. */
  readonly apiPort: number;
  readonly dir: string;
  readonly dataDir: string;
  /** Patroni's own log (stdout and stderr; PostgreSQL logs to `pgLogFile`). */
  readonly logFile: string;
  readonly pgLogFile: string;
  readonly apiUrl: string;
}

/** One member as GET /cluster reports it. */
export interface ClusterMember {
  name: string;
  /** "leader", "sync_standby" or "replica". */
  role: string;
  /** "running", "stopped", "starting", "creating replica", ... */
  state: string;
  host?: string;
  port?: number;
  timeline?: number;
  lag?: number | string;
}

export interface ClusterStatus {
  members: ClusterMember[];
}

/** When Patroni reported a new leader (times are `performance.now()` of this process). */
export interface LeaderReport {
  node: PatroniNode;
  /** First poll at which the node answered GET /primary with 200: it holds the leader key. */
  lockAt: number;
  /**
   * First poll at which it answered GET /primary with 200 and role "master"/"primary": it holds
   * the leader key and its PostgreSQL is out of recovery. This is "Patroni reports the leader".
   * The time the answer arrived; the report exists from some moment of that request on.
   */
  reportedAt: number;
  /** How long that request took (the uncertainty of `reportedAt`). */
  pollMs: number;
}

export interface HealthyState {
  leader: PatroniNode;
  /** The synchronous standby Patroni assigned (in /cluster). */
  sync: PatroniNode;
  /** Every other running node, each streaming from the leader. */
  replicas: PatroniNode[];
}

export interface StartPatroniOptions {
  /** PostgreSQL bin dir (default $PGDBPOOL_PG_BIN, else Debian's PostgreSQL 15). */
  pgBin?: string;
  /** Deadline for the whole start, etcd to a healthy cluster (default 120 s). */
  timeoutMs?: number;
}

/** Debian's PostgreSQL 15, the build the lab is made for. */
export const DEBIAN_PG15_BIN = "/usr/lib/postgresql/15/bin";

/** `$envName` if set, else `name` on PATH, else the first of `extra` that exists. */
function findBin(envName: string, name: string, extra: string[]): string | undefined {
  const candidates = [
    process.env[envName],
    ...(process.env.PATH ?? "").split(delimiter).filter(Boolean).map((d) => join(d, name)),
    ...extra,
  ].filter((p): p is string => !!p);
  return candidates.find((p) => existsSync(p));
}

/** Patroni's executable ($PATRONI_BIN, else `patroni` on PATH or Debian's), if installed. */
function patroniBin(): string | undefined {
  return findBin("PATRONI_BIN", "patroni", ["/usr/bin/patroni"]);
}

/** etcd's executable ($ETCD_BIN, else `etcd` on PATH or Debian's etcd-server), if installed. */
function etcdBin(): string | undefined {
  return findBin("ETCD_BIN", "etcd", ["/usr/bin/etcd"]);
}

/** The lab's PostgreSQL bin dir for `pgBin` (default $PGDBPOOL_PG_BIN, else Debian's 15). */
export function labPgBin(pgBin?: string): string {
  return pgBin ?? process.env.PGDBPOOL_PG_BIN ?? DEBIAN_PG15_BIN;
}

/**
 * What is missing for the lab, as one sentence, or undefined when everything is there:
 * patroni, python3-etcd, etcd and PostgreSQL tools Patroni needs (pg_rewind, pg_basebackup).
 */
export function patroniMissing(pgBin?: string): string | undefined {
  const missing: string[] = [];
  if (!patroniBin()) missing.push("patroni");
  else if (!existsSync("/usr/lib/python3/dist-packages/etcd") && !process.env.PATRONI_BIN) {
    missing.push("python3-etcd");
  }
  if (!etcdBin()) missing.push("etcd-server");
  const bin = labPgBin(pgBin);
  for (
    const tool of ["initdb", "pg_ctl", "postgres", "pg_rewind", "pg_basebackup", "pg_controldata"]
  ) {
    if (!existsSync(join(bin, tool))) missing.push(`${tool} in ${bin}`);
  }
  if (missing.length === 0) return undefined;
  return `the Patroni lab needs ${missing.join(", ")}: on Debian/Ubuntu run ` +
    "`apt-get install -y patroni python3-etcd etcd-server postgresql-15` (CI: .ci/run installs them)";
}

/**
 * A long-running child (etcd or Patroni) whose output goes to a log file; as root it runs as
 * the server user (exec.ts `wrap`).
 */
class Proc {
  readonly child: ChildProcess;
  exited = false;
  readonly #exit: Promise<void>;

  constructor(
    cmd: string,
    args: string[],
    cwd: string,
    logFile: string,
    env: Record<string, string>,
  ) {
    const [file, argv] = wrap(cmd, args, true);
    const fd = openSync(logFile, "a");
    chownToServer(logFile);
    try {
      // A file, not a pipe: PostgreSQL, which Patroni starts, inherits these descriptors and
      // outlives Patroni when it is killed.
      this.child = spawn(file, argv, { cwd, env, stdio: ["ignore", fd, fd] });
    } finally {
      closeSync(fd);
    }
    this.#exit = new Promise((resolve) => {
      this.child.on("error", () => {
        this.exited = true;
        resolve();
      });
      this.child.on("exit", () => {
        this.exited = true;
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return !this.exited && this.child.pid !== undefined && pidAlive(this.child.pid);
  }

  /** SIGKILL (setpriv execs the command, so the pid is the command's own). */
  kill(): void {
    if (this.exited || this.child.pid === undefined) return;
    try {
      process.kill(this.child.pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }

  async waitExit(timeoutMs: number): Promise<boolean> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<false>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
    try {
      return await Promise.race([this.#exit.then(() => true as const), timeout]);
    } finally {
      clearTimeout(timer);
    }
  }
}

/** GET or POST with a deadline; `json` is the parsed body when it is JSON. */
async function http(
  url: string,
  init: { method?: string; body?: unknown; timeoutMs?: number } = {},
): Promise<{ status: number; body: string; json: unknown }> {
  const res = await fetch(url, {
    method: init.method ?? "GET",
    headers: init.body === undefined ? undefined : { "content-type": "application/json" },
    body: init.body === undefined ? undefined : JSON.stringify(init.body),
    signal: AbortSignal.timeout(init.timeoutMs ?? 2_000),
  });
  const body = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    json = undefined;
  }
  return { status: res.status, body, json };
}

function tail(file: string, lines = 40): string {
  if (!existsSync(file)) return "(no log file)";
  return readFileSync(file, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
}

/**
 * Starts etcd and three Patroni nodes, waits for a leader with two streaming replicas (one of
 * them the synchronous standby), then creates the pool's login and database.
 */
export async function startPatroni(opts: StartPatroniOptions = {}): Promise<PatroniLab> {
  const missing = patroniMissing(opts.pgBin);
  if (missing) throw new Error(missing);
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  // As root: a readable copy when the server user cannot run the binaries where they are.
  const pgBin = await serverBinDir(labPgBin(opts.pgBin));
  // Ports are probed free but bound later (PostgreSQL only after initdb): another process may
  // take one meanwhile. Such a start is retried with new ports.
  for (let attempt = 1;; attempt++) {
    const lab = new PatroniLab(pgBin);
    try {
      await lab.start(deadline);
      return lab;
    } catch (err) {
      const logs = lab.allLogs();
      await lab.close().catch(() => {});
      if (
        attempt < 3 && /address already in use|could not bind/i.test(logs) && Date.now() < deadline
      ) {
        continue;
      }
      throw err;
    }
  }
}

export class PatroniLab {
  /** The login the pool uses: not a superuser, owner of {@link PatroniLab.database}. */
  readonly user = POOL_USER;
  readonly password: string = randomBytes(12).toString("hex");
  readonly database = DATABASE;
  readonly dir: string;
  readonly nodes: PatroniNode[] = [];
  readonly scope: string;
  readonly etcdLogFile: string;
  readonly #superPassword = randomBytes(12).toString("hex");
  readonly #replPassword = randomBytes(12).toString("hex");
  readonly #rewindPassword = randomBytes(12).toString("hex");
  readonly #procs = new Map<string, Proc>();
  #etcd: Proc | undefined;
  #etcdPort = 0;
  #etcdPeerPort = 0;
  #closing: Promise<void> | undefined;

  constructor(readonly pgBin: string) {
    this.dir = mkdtempSync(join(processRoot(), "patroni-"));
    chownToServer(this.dir);
    this.scope = `pgdbpool-${process.pid}`;
    this.etcdLogFile = join(this.dir, "etcd.log");
    track(this);
  }

  /** Used by {@link startPatroni}; starts everything and waits until healthy. */
  async start(deadline: number): Promise<void> {
    const ports = await freePorts(8);
    [this.#etcdPort, this.#etcdPeerPort] = ports;
    for (let i = 0; i < 3; i++) {
      const name = `node${i + 1}`;
      const dir = join(this.dir, name);
      mkdirSync(dir);
      chownToServer(dir);
      const port = ports[2 + i * 2];
      const apiPort = ports[3 + i * 2];
      this.nodes.push({
        name,
        host: HOST,
        port,
        apiPort,
        dir,
        dataDir: join(dir, "data"),
        logFile: join(dir, "patroni.log"),
        pgLogFile: join(dir, "log", "postgresql.log"),
        apiUrl: `http://${HOST}:${apiPort}`,
      });
      // It holds the superuser, replication and rewind passwords: 0600, owned by the server
      // user Patroni runs as (writeServerFile chowns it to that user when we are root).
      writeServerFile(
        join(dir, "patroni.yml"),
        JSON.stringify(this.#config(name, port, apiPort, dir), null, 2),
        0o600,
      );
      writeServerFile(join(dir, "pgpass"), "", 0o600);
    }
    await this.#startEtcd(deadline);
    for (const node of this.nodes) this.startNode(node);
    const healthy = await this.waitHealthy({
      timeoutMs: Math.max(1_000, deadline - Date.now()),
    });
    const leader = healthy.leader;
    const pw = this.password.replaceAll("'", "''");
    await this.query(leader, `CREATE ROLE ${POOL_USER} LOGIN PASSWORD '${pw}'`, [], "postgres");
    await this.query(leader, `CREATE DATABASE ${DATABASE} OWNER ${POOL_USER}`, [], "postgres");
    await this.waitReplayed(leader, healthy.replicas);
  }

  // Patroni reads YAML; JSON is YAML.
  #config(name: string, port: number, apiPort: number, dir: string): unknown {
    const hba = [
      `host replication ${REPLICATION_USER} ${HOST}/32 scram-sha-256`,
      `host all all ${HOST}/32 scram-sha-256`,
    ];
    return {
      scope: this.scope,
      namespace: "/pgdbpool/",
      name,
      log: { level: "INFO" },
      restapi: { listen: `${HOST}:${apiPort}`, connect_address: `${HOST}:${apiPort}` },
      etcd3: { hosts: [`${HOST}:${this.#etcdPort}`], protocol: "http" },
      bootstrap: {
        dcs: {
          ...PATRONI_TIMING,
          maximum_lag_on_failover: 1048576,
          synchronous_mode: true,
          synchronous_mode_strict: false,
          postgresql: {
            use_pg_rewind: true,
            use_slots: true,
            parameters: {
              wal_level: "replica",
              wal_log_hints: "on",
              max_connections: 200,
              max_wal_senders: 10,
              max_replication_slots: 10,
              wal_keep_size: "256MB",
              hot_standby: "on",
              hot_standby_feedback: "on",
              // Process kills only: the OS page cache survives them, so fsync adds nothing here.
              fsync: "off",
              synchronous_commit: "on",
              shared_buffers: "32MB",
              wal_receiver_status_interval: "1s",
              wal_retrieve_retry_interval: "1s",
            },
          },
        },
        initdb: [{ encoding: "UTF8" }, { locale: "C" }],
        pg_hba: hba,
      },
      postgresql: {
        listen: `${HOST}:${port}`,
        connect_address: `${HOST}:${port}`,
        data_dir: join(dir, "data"),
        bin_dir: this.pgBin,
        pgpass: join(dir, "pgpass"),
        authentication: {
          superuser: { username: SUPERUSER, password: this.#superPassword },
          replication: { username: REPLICATION_USER, password: this.#replPassword },
          rewind: { username: REWIND_USER, password: this.#rewindPassword },
        },
        basebackup: [{ checkpoint: "fast" }],
        pg_hba: hba,
        parameters: {
          unix_socket_directories: dir,
          logging_collector: "on",
          log_directory: join(dir, "log"),
          log_filename: "postgresql.log",
          log_line_prefix: "%m [%p] %q%a ",
        },
      },
      watchdog: { mode: "off" },
      tags: { nofailover: false, noloadbalance: false, clonefrom: false, nosync: false },
    };
  }

  #env(home: string): Record<string, string> {
    return {
      PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: home,
      LANG: "C.UTF-8",
      LC_ALL: "C.UTF-8",
      PYTHONUNBUFFERED: "1",
      PYTHONDONTWRITEBYTECODE: "1",
    };
  }

  async #startEtcd(deadline: number): Promise<void> {
    const etcd = etcdBin()!;
    const dir = join(this.dir, "etcd");
    mkdirSync(dir);
    chownToServer(dir);
    const client = `http://${HOST}:${this.#etcdPort}`;
    const peer = `http://${HOST}:${this.#etcdPeerPort}`;
    // deno-fmt-ignore
    this.#etcd = new Proc(etcd, [
      "--name", "lab", "--data-dir", join(dir, "data"),
      "--listen-client-urls", client, "--advertise-client-urls", client,
      "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
      "--initial-cluster", `lab=${peer}`, "--initial-cluster-state", "new",
      "--initial-cluster-token", this.scope, "--log-level", "warn",
    ], dir, this.etcdLogFile, this.#env(dir));
    await waitFor(async () => {
      if (this.#etcd!.exited) throw new Error(`etcd exited:\n${tail(this.etcdLogFile)}`);
      const r = await http(`${client}/health`, { timeoutMs: 1_000 });
      return r.status === 200 && (r.json as { health?: string })?.health === "true";
    }, {
      timeoutMs: Math.min(30_000, Math.max(1_000, deadline - Date.now())),
      message: "etcd to report healthy",
    }).catch((err) => {
      throw new Error(`${err.message}\n--- ${this.etcdLogFile} ---\n${tail(this.etcdLogFile)}`, {
        cause: err,
      });
    });
  }

  /** Starts (or restarts) a node's Patroni, which starts its PostgreSQL. No-op when running. */
  startNode(node: PatroniNode): void {
    if (this.isRunning(node)) return;
    const patroni = patroniBin()!;
    this.#procs.set(
      node.name,
      new Proc(
        patroni,
        [join(node.dir, "patroni.yml")],
        node.dir,
        node.logFile,
        this.#env(node.dir),
      ),
    );
  }

  /** Whether the node's Patroni process is alive. */
  isRunning(node: PatroniNode): boolean {
    return this.#procs.get(node.name)?.alive ?? false;
  }

  /** The pid in the node's postmaster.pid if that process is alive, else null. */
  postmasterPid(node: PatroniNode): number | null {
    try {
      const pid = Number(readFileSync(join(node.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
      return pid > 0 && pidAlive(pid) ? pid : null;
    } catch {
      return null;
    }
  }

  /**
   * `kill -9` of the node's Patroni, then of its postmaster (Patroni first, so that it cannot
   * react to its PostgreSQL dying). Returns `performance.now()` right after both signals.
   * The postmaster's children exit on their own once they notice it is gone.
   */
  killNode(node: PatroniNode): number {
    const proc = this.#procs.get(node.name);
    const pm = this.postmasterPid(node);
    proc?.kill();
    if (pm !== null) {
      try {
        process.kill(pm, "SIGKILL");
      } catch {
        // already gone
      }
    }
    return performance.now();
  }

  /**
   * Crashes the current leader ({@link killNode}) and waits until no process of it is left
   * (so a restart cannot meet a half-dead postmaster).
   */
  async crashLeader(): Promise<{ node: PatroniNode; at: number }> {
    const node = await this.leader();
    const at = this.killNode(node);
    await this.#procs.get(node.name)?.waitExit(10_000);
    await waitFor(() => (processesIn(node.dataDir) ?? []).length === 0, {
      timeoutMs: 15_000,
      message: `every PostgreSQL process of crashed ${node.name} to exit`,
    });
    return { node, at };
  }

  /** GET /cluster from the first node whose REST API answers. */
  async status(): Promise<ClusterStatus> {
    let last: unknown;
    for (const node of this.nodes.filter((n) => this.isRunning(n))) {
      try {
        const r = await http(`${node.apiUrl}/cluster`);
        if (r.status === 200 && r.json) return r.json as ClusterStatus;
        last = new Error(`${node.name}: GET /cluster answered ${r.status}: ${r.body}`);
      } catch (err) {
        last = err;
      }
    }
    throw new Error(`no Patroni REST API answered GET /cluster`, { cause: last });
  }

  /** Whether `node` answers GET /primary with 200 and a PostgreSQL out of recovery. */
  async isLeader(node: PatroniNode): Promise<{ lock: boolean; primary: boolean }> {
    const r = await http(`${node.apiUrl}/primary`, { timeoutMs: 1_000 });
    const role = (r.json as { role?: string } | undefined)?.role;
    const lock = r.status === 200;
    return { lock, primary: lock && (role === "master" || role === "primary") };
  }

  /** The node Patroni reports as leader with a primary PostgreSQL (waits up to `timeoutMs`). */
  async leader(timeoutMs = 60_000): Promise<PatroniNode> {
    return (await waitFor<PatroniNode | undefined>(async () => {
      for (const node of this.nodes.filter((n) => this.isRunning(n))) {
        if ((await this.isLeader(node).catch(() => null))?.primary) return node;
      }
      return undefined;
    }, { timeoutMs, intervalMs: 50, message: "Patroni to report a leader" }))!;
  }

  /**
   * Polls GET /primary on every running node but `previous` every `intervalMs` until one holds
   * the leader key with its PostgreSQL out of recovery: see {@link LeaderReport}.
   */
  async waitForNewLeader(
    previous: PatroniNode,
    opts: { intervalMs?: number; timeoutMs?: number } = {},
  ): Promise<LeaderReport> {
    const intervalMs = opts.intervalMs ?? 20;
    const until = performance.now() + (opts.timeoutMs ?? 60_000);
    const lockAt = new Map<string, number>();
    while (performance.now() < until) {
      const candidates = this.nodes.filter((n) => n !== previous && this.isRunning(n));
      const seen = await Promise.all(candidates.map(async (node) => {
        const sent = performance.now();
        const r = await this.isLeader(node).catch(() => null);
        return { node, r, sent, at: performance.now() };
      }));
      for (const { node, r, sent, at } of seen) {
        if (r?.lock && !lockAt.has(node.name)) lockAt.set(node.name, at);
        if (r?.primary) {
          return { node, lockAt: lockAt.get(node.name)!, reportedAt: at, pollMs: at - sent };
        }
      }
      await sleep(intervalMs);
    }
    throw new Error(
      `Patroni reported no new leader (other than ${previous.name}) within ${
        opts.timeoutMs ?? 60_000
      } ms; ` +
        `cluster: ${JSON.stringify(await this.status().catch((e) => String(e)))}`,
    );
  }

  /** Names of the standbys streaming from `leader` (pg_stat_replication, state streaming). */
  async streamingFrom(leader: PatroniNode): Promise<string[]> {
    const rows = await this.query(
      leader,
      "SELECT application_name AS n FROM pg_stat_replication WHERE state = 'streaming'",
      [],
      "postgres",
    );
    return rows.map((r) => r.n as string).sort();
  }

  /**
   * Waits until `node` streams from the current leader; resolves to `performance.now()` of the
   * first poll (every `intervalMs`) that saw it.
   */
  async waitStreaming(
    node: PatroniNode,
    opts: { intervalMs?: number; timeoutMs?: number } = {},
  ): Promise<number> {
    let leader: PatroniNode | undefined;
    let seen: string[] = [];
    return await waitFor(async () => {
      leader = await this.leader(5_000);
      seen = await this.streamingFrom(leader);
      return seen.includes(node.name) ? performance.now() : 0;
    }, {
      timeoutMs: opts.timeoutMs ?? 60_000,
      intervalMs: opts.intervalMs ?? 20,
      message: `${node.name} streaming from the leader`,
    }).catch((err) => {
      throw new Error(
        `${err.message} (leader ${leader?.name ?? "?"} streams to: ${
          seen.join(", ") || "none"
        })\n` +
          `--- ${node.logFile} (tail) ---\n${tail(node.logFile)}`,
        { cause: err },
      );
    });
  }

  /**
   * Waits until Patroni reports a leader, every other running node streams from it, and /cluster
   * names one of them the synchronous standby.
   */
  async waitHealthy(opts: { timeoutMs?: number } = {}): Promise<HealthyState> {
    const timeoutMs = opts.timeoutMs ?? 60_000;
    let last = "";
    const healthy = await waitFor<HealthyState | undefined>(async () => {
      const running = this.nodes.filter((n) => this.isRunning(n));
      const leader = await this.leader(Math.min(timeoutMs, 5_000));
      const streaming = await this.streamingFrom(leader);
      const status = await this.status();
      last = `leader ${leader.name}, streaming: ${streaming.join(", ") || "none"}, cluster: ` +
        JSON.stringify(status.members.map((m) => `${m.name}:${m.role}:${m.state}`));
      const replicas = running.filter((n) => n !== leader);
      if (!replicas.every((n) => streaming.includes(n.name))) return undefined;
      const syncName = status.members.find((m) => m.role === "sync_standby")?.name;
      const sync = replicas.find((n) => n.name === syncName);
      const leaderName = status.members.find((m) => m.role === "leader")?.name;
      if (!sync || leaderName !== leader.name) return undefined;
      return { leader, sync, replicas };
    }, { timeoutMs, intervalMs: 100, message: "a healthy Patroni cluster" }).catch((err) => {
      throw new Error(`${err.message}; last seen: ${last}\n${this.allLogs(15)}`, { cause: err });
    });
    return healthy!;
  }

  /** Waits until every node in `standbys` has replayed `leader`'s current WAL position. */
  async waitReplayed(
    leader: PatroniNode,
    standbys: PatroniNode[],
    timeoutMs = 30_000,
  ): Promise<void> {
    const [{ lsn }] = await this.query(leader, "SELECT pg_current_wal_lsn()::text AS lsn");
    const ok = "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false) AS ok";
    await waitFor(async () => {
      const done = await Promise.all(
        standbys.map(async (s) => (await this.query(s, ok, [lsn]))[0].ok),
      );
      return done.every(Boolean);
    }, { timeoutMs, message: `${standbys.map((s) => s.name).join(", ")} to replay ${lsn}` });
  }

  /**
   * Planned switchover through Patroni's REST API (POST /switchover on the leader). In
   * synchronous mode Patroni only switches to the synchronous standby, the default candidate.
   * Resolves once Patroni answered (it waits for the leader key to move).
   */
  async switchover(
    candidate?: PatroniNode,
  ): Promise<{ from: PatroniNode; to: PatroniNode; answer: string }> {
    const status = await this.status();
    const leaderName = status.members.find((m) => m.role === "leader")?.name;
    const from = this.nodes.find((n) => n.name === leaderName);
    const syncName = status.members.find((m) => m.role === "sync_standby")?.name;
    const to = candidate ?? this.nodes.find((n) => n.name === syncName);
    if (!from || !to) {
      throw new Error(`switchover: no leader or sync standby in ${JSON.stringify(status)}`);
    }
    const r = await http(`${from.apiUrl}/switchover`, {
      method: "POST",
      body: { leader: from.name, candidate: to.name },
      timeoutMs: 60_000,
    });
    if (r.status !== 200) {
      throw new Error(
        `switchover ${from.name} -> ${to.name}: Patroni answered ${r.status}: ${r.body}`,
      );
    }
    return { from, to, answer: r.body };
  }

  /** Size of the node's Patroni log now: pass it to {@link rewound} to look only at later lines. */
  logSize(node: PatroniNode): number {
    return existsSync(node.logFile) ? readFileSync(node.logFile).length : 0;
  }

  /** Whether the node's Patroni log (from byte `since` on) says pg_rewind ran and succeeded. */
  rewound(node: PatroniNode, since = 0): boolean {
    if (!existsSync(node.logFile)) return false;
    const text = readFileSync(node.logFile).subarray(since).toString("utf8");
    return /running pg_rewind from/.test(text) && /pg_rewind exit code=0\b/.test(text);
  }

  /** Endpoints in this project's config shape, in the given node order. */
  endpoints(order: PatroniNode[] = this.nodes): Array<{
    host: string;
    port: number;
    name: string;
    user: string;
    pass: string;
  }> {
    return order.map((n) => ({
      host: n.host,
      port: n.port,
      name: DATABASE,
      user: POOL_USER,
      pass: this.password,
    }));
  }

  /** Admin query as the superuser over a fresh connection (database: the pool's by default). */
  async query(
    node: PatroniNode,
    text: string,
    params: unknown[] = [],
    database = DATABASE,
    // deno-lint-ignore no-explicit-any
  ): Promise<any[]> {
    const sql = postgres({
      host: node.host,
      port: node.port,
      user: SUPERUSER,
      pass: this.#superPassword,
      database,
      max: 1,
      ssl: false,
      connect_timeout: 5,
      fetch_types: false,
      onnotice: () => {},
      connection: { application_name: HARNESS_APP },
    });
    try {
      // deno-lint-ignore no-explicit-any
      return Array.from(await sql.unsafe(text, params as any[]));
    } finally {
      await sql.end({ timeout: 1 });
    }
  }

  /**
   * Client sessions on every node whose PostgreSQL runs, with application_name `app` or
   * `app/...` (a pool's connections and its health probes), per node name.
   */
  async sessions(app: string): Promise<Record<string, number>> {
    const text = `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
        AND (application_name = $1 OR left(application_name, length($1) + 1) = $1 || '/')`;
    const out: Record<string, number> = {};
    for (const node of this.nodes) {
      if (this.postmasterPid(node) === null) continue;
      out[node.name] = (await this.query(node, text, [app], "postgres"))[0].n;
    }
    return out;
  }

  /** The tails of every log, for failure messages. */
  allLogs(lines = 30): string {
    const parts = [`--- ${this.etcdLogFile} ---\n${tail(this.etcdLogFile, lines)}`];
    for (const n of this.nodes) {
      parts.push(`--- ${n.logFile} ---\n${tail(n.logFile, lines)}`);
      parts.push(`--- ${n.pgLogFile} ---\n${tail(n.pgLogFile, lines)}`);
    }
    return parts.join("\n");
  }

  /** Kills every process of the lab (Patroni first), then deletes its directory. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const procs = [...this.#procs.values()];
    for (const p of procs) p.kill();
    await Promise.all(procs.map((p) => p.waitExit(5_000)));
    this.#etcd?.kill();
    killAll(this.dir);
    let left = processesIn(this.dir);
    for (const until = Date.now() + 15_000; left && left.length > 0 && Date.now() < until;) {
      await sleep(50);
      killAll(this.dir);
      left = processesIn(this.dir);
    }
    await this.#etcd?.waitExit(5_000);
    await rm(this.dir, { recursive: true, force: true });
    untrack(this);
    if (left && left.length > 0) {
      throw new Error(
        `PatroniLab.close: processes still running in ${this.dir}: ${left.join(", ")}`,
      );
    }
  }

  /** Exit-hook variant: synchronous only. */
  closeSync(): void {
    for (const p of this.#procs.values()) p.kill();
    this.#etcd?.kill();
    killAll(this.dir);
    rmSync(this.dir, { recursive: true, force: true });
    untrack(this);
  }
}

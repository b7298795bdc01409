// Data directories: the per-process root, the initdb template, TLS material and exit cleanup.
//
// initdb runs once per (bin dir, process) into a template that every cluster copies. Standbys
// are copies of the same cleanly shut down template, so no pg_basebackup is needed (the
// embedded PostgreSQL package does not ship one).
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import process from "node:process";
import {
  chownToServer,
  pidAlive,
  processesIn,
  run,
  serverCanAccess,
  serverUser,
  untraversableDir,
  writeServerFile,
} from "./exec.ts";

export const USER = "pool_user";
export const DATABASE = "pooltest";
export const HOST = "127.0.0.1";
/** One random password per process: it is baked into the template every cluster copies. */
export const PASSWORD: string = randomBytes(12).toString("hex");

export interface Template {
  dir: string;
  /** Major version, from PG_VERSION. */
  version: number;
}

export interface Cert {
  certFile: string;
  cert: string;
  key: string;
}

/** Something the exit hook must tear down synchronously. */
export interface Tracked {
  closeSync(): void;
}

const live = new Set<Tracked>();
const templates = new Map<string, Promise<Template>>();
let root: string | undefined;
let certPromise: Promise<Cert> | undefined;

// Only `pgdbpool-<pid>-` names are reaped: the shared binaries copy (binaries.ts,
// `pgdbpool-bin-<hash>`) must survive every process.
const ROOT_PREFIX = "pgdbpool-";

/** Registers a cluster for the exit hook (process "exit" / Deno "unload"). */
export function track(d: Tracked): void {
  live.add(d);
}

export function untrack(d: Tracked): void {
  live.delete(d);
}

/** tmpdir()/pgdbpool-<pid>-XXXXXX, created on first use; the pid lets later runs reap it. */
export function processRoot(): string {
  if (root) return root;
  reapStaleRoots();
  const made = mkdtempSync(join(tmpdir(), `${ROOT_PREFIX}${process.pid}-`));
  chownToServer(made);
  // Data directories, logs and password files all live here: PostgreSQL (running as the
  // server user when we are root) must reach it, or every initdb fails obscurely.
  if (!serverCanAccess(made, "w")) {
    rmSync(made, { recursive: true, force: true });
    const name = serverUser()?.name;
    const blocked = untraversableDir(made);
    throw new Error(
      `the PostgreSQL server user '${name}' cannot reach the temporary directory ${tmpdir()}` +
        (blocked ? ` (it cannot traverse ${blocked})` : "") +
        `: set TMPDIR to a directory every user can traverse, such as /tmp` +
        (blocked ? `, or chmod o+x ${blocked}` : ""),
    );
  }
  root = made;
  process.once("exit", onExit);
  // Deno's test runner never emits process "exit"; it does dispatch "unload".
  const g = globalThis as { addEventListener?: (type: string, fn: () => void) => void };
  g.addEventListener?.("unload", onExit);
  return root;
}

function onExit(): void {
  for (const d of [...live]) {
    try {
      d.closeSync();
    } catch {
      // best effort while exiting
    }
  }
  if (root) rmSync(root, { recursive: true, force: true });
  root = undefined;
}

/** Kills every process working inside `dir` (PostgreSQL processes chdir to their data dir). */
export function killAll(dir: string): void {
  for (const pid of processesIn(dir) ?? []) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
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
    // Without /proc we cannot tell whether its servers still run: leave it alone.
    if (processesIn(dir) === null) continue;
    killAll(dir);
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The initialised, cleanly shut down template for `binDir` (made once per process). */
export function templateFor(binDir: string): Promise<Template> {
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
    // deno-fmt-ignore
    await run(join(binDir, "initdb"), [
      "-D", dir, "-U", USER, `--pwfile=${pwFile}`, "-A", "scram-sha-256",
      "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
    ], { asServer: true, cwd });
  } finally {
    rmSync(pwFile, { force: true });
  }
  appendFileSync(join(dir, "postgresql.conf"), SERVER_CONF);
  writeServerFile(join(dir, "pg_hba.conf"), hba(false));
  // Single-user mode creates the database without a listening server and exits with a clean
  // shutdown checkpoint, which is what makes plain copies usable as standbys.
  const single = ["--single", "-D", dir, "-c", "fsync=off", "postgres"];
  const input = `CREATE DATABASE ${DATABASE};\n`;
  const out = await run(join(binDir, "postgres"), single, { asServer: true, cwd, input });
  if (/\bERROR:/.test(out.stdout + out.stderr)) {
    throw new Error(`creating database ${DATABASE} failed:\n${out.stdout}${out.stderr}`);
  }
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
    lines.push(
      `${type} all all ${HOST}/32 scram-sha-256`,
      `${type} replication all ${HOST}/32 scram-sha-256`,
    );
  }
  return lines.join("\n") + "\n";
}

/** A self-signed certificate for CN=localhost and IP 127.0.0.1 (made once per process). */
export function sslCert(): Promise<Cert> {
  certPromise ??= (async () => {
    const dir = join(processRoot(), "ssl");
    mkdirSync(dir, { recursive: true });
    const certFile = join(dir, "server.crt");
    const keyFile = join(dir, "server.key");
    // deno-fmt-ignore
    await run("openssl", [
      "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=localhost",
      "-addext", `subjectAltName=DNS:localhost,IP:${HOST}`, "-keyout", keyFile, "-out", certFile,
    ]);
    return { certFile, cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8") };
  })();
  certPromise.catch(() => (certPromise = undefined));
  return certPromise;
}

/** Turns TLS on in a data directory; pg_hba then has hostssl lines and host lines. */
export function enableSsl(dataDir: string, cert: Cert): void {
  writeServerFile(join(dataDir, "server.crt"), cert.cert);
  writeServerFile(join(dataDir, "server.key"), cert.key, 0o600); // postgres rejects looser modes
  appendFileSync(join(dataDir, "postgresql.conf"), "ssl = on\n");
  writeServerFile(join(dataDir, "pg_hba.conf"), hba(true));
}

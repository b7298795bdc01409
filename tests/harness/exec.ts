// Process, user and port helpers shared by the cluster harness.
import { spawn, spawnSync } from "node:child_process";
import {
  chownSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer, type Server } from "node:net";
import { dirname, resolve } from "node:path";
import process from "node:process";

/** The unprivileged account PostgreSQL runs as when we are root (initdb/postgres refuse root). */
export interface ServerUser {
  readonly name: string;
  readonly uid: number;
  readonly gid: number;
}

let cachedUser: ServerUser | null | undefined;

/** `postgres` if that account exists, else `nobody`; null when not root (run as ourselves). */
export function serverUser(): ServerUser | null {
  if (cachedUser !== undefined) return cachedUser;
  if (process.getuid?.() !== 0) return (cachedUser = null);
  const passwd = readFileSync("/etc/passwd", "utf8").split("\n").map((l) => l.split(":"));
  for (const name of ["postgres", "nobody"]) {
    const row = passwd.find((f) => f[0] === name);
    if (!row) continue;
    // Checked here, once, so a missing setpriv is one clear message rather than a spawn
    // error from whichever PostgreSQL command happens to run first.
    if (spawnSync("setpriv", ["--version"], { stdio: "ignore" }).error) {
      throw new Error(
        `running as root, the test harness starts PostgreSQL as '${name}' through setpriv, ` +
          "which is not installed: install util-linux (it provides setpriv) or run as a non-root user",
      );
    }
    return (cachedUser = { name, uid: Number(row[2]), gid: Number(row[3]) });
  }
  throw new Error("running as root but neither a 'postgres' nor a 'nobody' account exists");
}

/**
 * Whether the server user may access `path` (`test -r/-w/-x`, i.e. access(2) as that user, so
 * every directory above it must be traversable too). Always true when not root.
 */
export function serverCanAccess(path: string, mode: "r" | "w" | "x"): boolean {
  if (!serverUser()) return true;
  const [file, argv] = wrap("test", [`-${mode}`, path], true);
  return spawnSync(file, argv, { stdio: "ignore", timeout: 30_000 }).status === 0;
}

/**
 * The first directory from / down to `path` that the server user cannot traverse, judged from
 * owner, group and mode bits (ACLs aside); undefined if none, or when not root. For messages
 * that say what to change.
 */
export function untraversableDir(path: string): string | undefined {
  const u = serverUser();
  if (!u) return undefined;
  const chain: string[] = [];
  for (let p = resolve(path);; p = dirname(p)) {
    chain.unshift(p);
    if (dirname(p) === p) break;
  }
  for (const dir of chain) {
    let st;
    try {
      st = statSync(dir);
    } catch {
      return undefined; // missing: not a permission problem
    }
    if (!st.isDirectory()) return undefined;
    const bits = st.uid === u.uid ? st.mode >> 6 : st.gid === u.gid ? st.mode >> 3 : st.mode;
    if ((bits & 1) === 0) return dir;
  }
  return undefined;
}

/** Gives a path to the server user (no-op when not root). */
export function chownToServer(path: string): void {
  const u = serverUser();
  if (u) chownSync(path, u.uid, u.gid);
}

/** Writes a file the server user owns; `mode` 0o600 for keys PostgreSQL checks. */
export function writeServerFile(path: string, text: string, mode = 0o644): void {
  writeFileSync(path, text, { mode });
  chownToServer(path);
}

/**
 * The command line that runs `cmd` as the server user when `asServer` and we are root
 * (`setpriv`, which execs `cmd`, so the child's pid is the command's own), else unchanged.
 */
export function wrap(cmd: string, args: string[], asServer: boolean): [string, string[]] {
  const u = asServer ? serverUser() : null;
  if (!u) return [cmd, args];
  return ["setpriv", [`--reuid=${u.uid}`, `--regid=${u.gid}`, "--clear-groups", cmd, ...args]];
}

export interface RunOptions {
  /** Run as the server user (see {@link serverUser}). */
  asServer?: boolean;
  /** Written to stdin, which is then closed. */
  input?: string;
  cwd?: string;
  /** Kill the command after this long (default 120 s). */
  timeoutMs?: number;
}

export interface RunResult {
  stdout: string;
  stderr: string;
}

/**
 * Runs a command with captured output; rejects with both streams in the message on a non-zero
 * exit. Commands that daemonise (pg_ctl start) must redirect the daemon's output (-l), or the
 * inherited pipes keep this promise pending.
 */
export function run(cmd: string, args: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [file, argv] = wrap(cmd, args, opts.asServer ?? false);
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { cwd: opts.cwd, stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs ?? 120_000);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(new Error(`${cmd}: ${err.message}`, { cause: err }));
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve({ stdout, stderr });
      const how = signal ? `signal ${signal}` : `exit code ${code}`;
      reject(new Error(`${cmd} ${args.join(" ")} failed (${how})\n${stdout}${stderr}`.trimEnd()));
    });
    child.stdin!.on("error", () => {}); // EPIPE if the command exits without reading stdin
    child.stdin!.end(opts.input ?? "");
  });
}

/** Synchronous variant for exit hooks, where nothing asynchronous runs any more. */
export function runSync(cmd: string, args: string[], asServer: boolean): void {
  const [file, argv] = wrap(cmd, args, asServer);
  spawnSync(file, argv, { stdio: "ignore", timeout: 30_000 });
}

/**
 * Distinct free loopback ports. All probe listeners stay open until every port is known, so
 * the ports differ; another process may still grab one before the server binds it (callers
 * retry on "address in use").
 */
export async function freePorts(count: number): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < count; i++) {
      const srv = createServer();
      servers.push(srv);
      await new Promise<void>((resolve, reject) => {
        srv.once("error", reject);
        srv.listen(0, "127.0.0.1", () => resolve());
      });
      ports.push((srv.address() as { port: number }).port);
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise<void>((r) => s.close(() => r()))));
  }
}

/** True if `pid` is a live (non-zombie) process. */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch (err) {
    // EPERM: it exists but belongs to someone else.
    return (err as { code?: string }).code === "EPERM";
  }
  try {
    // A killed postmaster stays a zombie until its (init-like) parent reaps it.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return true; // no procfs: trust kill(0)
  }
}

/**
 * Pids of live processes whose working directory is `dir` or below it. PostgreSQL processes
 * chdir into their data directory (and rename themselves, so argv is useless for this).
 * Linux only: returns null without /proc.
 */
export function processesIn(dir: string): number[] | null {
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return null;
  }
  const pids: number[] = [];
  for (const e of entries) {
    if (!/^\d+$/.test(e)) continue;
    try {
      const cwd = readlinkSync(`/proc/${e}/cwd`).replace(/ \(deleted\)$/, "");
      if ((cwd === dir || cwd.startsWith(dir + "/")) && pidAlive(Number(e))) pids.push(Number(e));
    } catch {
      // exited meanwhile, or not ours to inspect
    }
  }
  return pids;
}

// One PostgreSQL server process (primary or standby) driven through pg_ctl.
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import postgres from "postgres";
import type { PgServer } from "./cluster.ts";
import { pidAlive, run, runSync } from "./exec.ts";
import { waitFor } from "./wait.ts";

/** application_name of the harness's own admin connections (countConnections skips them). */
export const HARNESS_APP = "pgdbpool-harness";

/** Generous: pg_ctl waits this long for start/stop/promote on a busy 2-core CI machine. */
const PG_CTL_WAIT_S = "60";

export interface ServerSpec {
  name: string;
  host: string;
  port: number;
  dataDir: string;
  logFile: string;
  binDir: string;
  user: string;
  password: string;
  database: string;
}

export class Server implements PgServer {
  readonly name: string;
  readonly host: string;
  readonly dataDir: string;
  readonly logFile: string;
  #port: number;
  readonly #spec: ServerSpec;

  constructor(spec: ServerSpec) {
    this.#spec = spec;
    this.name = spec.name;
    this.host = spec.host;
    this.dataDir = spec.dataDir;
    this.logFile = spec.logFile;
    this.#port = spec.port;
  }

  get port(): number {
    return this.#port;
  }

  /** Only before the first start: used to retry when another process took the probed port. */
  reassignPort(port: number): void {
    this.#port = port;
  }

  // deno-lint-ignore no-explicit-any
  async query(text: string, params: unknown[] = []): Promise<any[]> {
    const s = this.#spec;
    const sql = postgres({
      host: this.host,
      port: this.#port,
      user: s.user,
      pass: s.password,
      database: s.database,
      max: 1,
      ssl: false,
      connect_timeout: 10,
      fetch_types: false, // saves a catalog round trip per admin query
      onnotice: () => {},
      connection: { application_name: HARNESS_APP },
    });
    try {
      // deno-lint-ignore no-explicit-any
      const rows = await sql.unsafe(text, params as any[]);
      return Array.from(rows); // plain array: RowList's extra fields upset deepStrictEqual
    } finally {
      await sql.end({ timeout: 1 });
    }
  }

  async start(): Promise<void> {
    if (this.isRunning()) return;
    // The port goes on the command line (not into postgresql.conf) so a retry can change it.
    await this.#pgCtl(
      ["start", "-l", this.logFile, "-w", "-t", PG_CTL_WAIT_S, "-o", `-p ${this.#port}`],
      "start",
    );
    // pg_ctl -w trusts postmaster.pid's status line; also prove a real login works.
    await waitFor(() => this.query("select 1").then(() => true), {
      timeoutMs: 30_000,
      message: `${this.name} to accept connections`,
    }).catch((err) => this.#fail("start", err));
  }

  async stop(mode: "fast" | "immediate" = "fast"): Promise<void> {
    if (!this.isRunning()) return;
    await this.#pgCtl(["stop", "-m", mode, "-w", "-t", PG_CTL_WAIT_S], "stop");
  }

  async promote(): Promise<void> {
    await this.#pgCtl(["promote", "-w", "-t", PG_CTL_WAIT_S], "promote");
    await waitFor(
      async () => (await this.query("select pg_is_in_recovery() as r"))[0].r === false,
      { timeoutMs: 30_000, message: `${this.name} to leave recovery after promote` },
    ).catch((err) => this.#fail("promote", err));
  }

  isRunning(): boolean {
    const pid = this.postmasterPid();
    return pid !== null && pidAlive(pid);
  }

  /** The pid recorded in postmaster.pid, or null when the file is absent. */
  postmasterPid(): number | null {
    try {
      const pid = Number(readFileSync(join(this.dataDir, "postmaster.pid"), "utf8").split("\n")[0]);
      return pid > 0 ? pid : null;
    } catch {
      return null;
    }
  }

  /** For exit hooks: immediate stop without awaiting anything. */
  stopSync(): void {
    if (!this.isRunning()) return;
    runSync(join(this.#spec.binDir, "pg_ctl"), [
      "stop",
      "-D",
      this.dataDir,
      "-m",
      "immediate",
      "-w",
    ], true);
  }

  /** The last lines of the server log, for error messages. */
  logTail(lines = 30): string {
    if (!existsSync(this.logFile)) return "(no log file)";
    return readFileSync(this.logFile, "utf8").trimEnd().split("\n").slice(-lines).join("\n");
  }

  async #pgCtl(args: string[], what: string): Promise<void> {
    const pgCtl = join(this.#spec.binDir, "pg_ctl");
    await run(pgCtl, [args[0], "-D", this.dataDir, ...args.slice(1)], {
      asServer: true,
      cwd: join(this.dataDir, ".."),
    }).catch((err) => this.#fail(what, err));
  }

  #fail(what: string, err: unknown): never {
    const msg = err instanceof Error ? err.message : String(err);
    throw new Error(
      `${this.name} (port ${this.#port}): ${what} failed: ${msg}\n--- ${this.logFile} (tail) ---\n${this.logTail()}`,
      { cause: err },
    );
  }
}

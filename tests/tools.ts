// Helpers for the tests that drive external programs: runtimes and tools from node_modules,
// child processes with deadlines, HTTP with timeouts. Runs under Deno and Bun.
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { waitFor } from "./harness/wait.ts";

/** The repository root. */
export const ROOT: string = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");

const bin = (...parts: string[]) => join(ROOT, "node_modules", ...parts);
const platformArch = `${process.platform}-${process.arch}`;

function firstExisting(what: string, candidates: string[], hint: string): string {
  const found = candidates.find((p) => existsSync(p));
  if (!found) throw new Error(`${what} not found (looked at ${candidates.join(", ")}): ${hint}`);
  return found;
}

/** The real Deno binary (not the Node wrapper in node_modules/.bin). */
export function denoBin(): string {
  const deno = (globalThis as { Deno?: { execPath(): string } }).Deno;
  if (deno) return deno.execPath();
  return firstExisting(
    "deno",
    [
      bin("@deno", `${platformArch}-glibc`, "deno"),
      bin("@deno", platformArch, "deno"),
      bin(".bin", "deno"),
    ],
    'run "npm install"',
  );
}

/** The real Bun binary. */
export function bunBin(): string {
  if ("Bun" in globalThis) return process.execPath;
  return firstExisting(
    "bun",
    [bin("bun", "bin", "bun.exe"), bin(".bin", "bun")],
    'run "npm install"',
  );
}

/** Node 24 from the npm package `node@24` (a real binary). */
export function node24Bin(): string {
  return firstExisting(
    "node 24",
    [bin("node", "bin", "node"), bin(".bin", "node")],
    'run "npm install" (devDependency "node": "^24")',
  );
}

/** The workerd binary of the npm package `workerd`. */
export function workerdBin(): string {
  const arch = process.arch === "x64" ? "64" : process.arch;
  return firstExisting(
    "workerd",
    [
      bin("@cloudflare", `workerd-${process.platform}-${arch}`, "bin", "workerd"),
      bin(".bin", "workerd"),
    ],
    'run "npm install" (devDependency "workerd")',
  );
}

/** The esbuild binary. */
export function esbuildBin(): string {
  return firstExisting(
    "esbuild",
    [bin("@esbuild", platformArch, "bin", "esbuild"), bin(".bin", "esbuild")],
    'run "npm install" (devDependency "esbuild")',
  );
}

/** Result of {@link runCommand}. */
export interface CommandResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Options of {@link runCommand}. */
export interface CommandOptions {
  cwd?: string;
  env?: Record<string, string | undefined>;
  /** Kill (SIGKILL) after this long and reject (default 120 s). */
  timeoutMs?: number;
  input?: string;
}

/** Runs a command to completion and resolves with its exit status and output (never rejects on exit codes). */
export function runCommand(
  cmd: string,
  args: string[],
  opts: CommandOptions = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, NO_COLOR: "1", ...opts.env },
      stdio: ["pipe", "pipe", "pipe"],
    });
    let stdout = "";
    let stderr = "";
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(
        new Error(
          `${cmd} ${args.join(" ")} did not finish within ${timeoutMs} ms\n${stdout}${stderr}`,
        ),
      );
    }, timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin!.on("error", () => {});
    child.stdin!.end(opts.input ?? "");
  });
}

/** A long-running child process whose output is collected, with deadline-bound waits. */
export class Service {
  readonly child: ChildProcess;
  output = "";
  #exit: Promise<{ code: number | null; signal: string | null }>;
  exited: { code: number | null; signal: string | null } | undefined;

  constructor(
    readonly name: string,
    cmd: string,
    args: string[],
    opts: { cwd?: string; env?: Record<string, string | undefined> } = {},
  ) {
    this.child = spawn(cmd, args, {
      cwd: opts.cwd ?? ROOT,
      env: { ...process.env, NO_COLOR: "1", ...opts.env },
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child.stdout!.setEncoding("utf8").on("data", (d: string) => (this.output += d));
    this.child.stderr!.setEncoding("utf8").on("data", (d: string) => (this.output += d));
    this.#exit = new Promise((resolve) => {
      this.child.on("error", (err) => {
        this.output += `\n[spawn error] ${err.message}`;
        this.exited = { code: -1, signal: null };
        resolve(this.exited);
      });
      this.child.on("exit", (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
    });
  }

  /** Waits until the collected output matches `pattern`; fails early if the process exits. */
  async waitForOutput(pattern: RegExp, timeoutMs = 30_000): Promise<RegExpMatchArray> {
    return await waitFor<RegExpMatchArray | null>(() => {
      const m = this.output.match(pattern);
      if (m) return m;
      if (this.exited) {
        throw new Error(
          `${this.name} exited (${
            JSON.stringify(this.exited)
          }) before printing ${pattern}:\n${this.output}`,
        );
      }
      return null;
    }, { timeoutMs, message: `${this.name} to print ${pattern}` }).then((m) => m!, (err) => {
      throw new Error(`${err.message}\n--- ${this.name} output ---\n${this.output}`, {
        cause: err,
      });
    });
  }

  /** Sends a signal. */
  kill(signal: "SIGTERM" | "SIGINT" | "SIGKILL"): void {
    // process.kill, not child.kill: after child.kill(sig), Deno 2.9's node:child_process reports
    // the exit as "killed by sig" even when the child handled the signal and exited with 0.
    if (!this.exited && this.child.pid !== undefined) process.kill(this.child.pid, signal);
  }

  /** Resolves with the exit status, or rejects when the process is still running after `timeoutMs`. */
  async waitExit(timeoutMs: number): Promise<{ code: number | null; signal: string | null }> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      return await Promise.race([
        this.#exit,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new Error(
                  `${this.name} still running ${timeoutMs} ms after the signal:\n${this.output}`,
                ),
              ),
            timeoutMs,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** Last resort for cleanup: SIGKILL and wait. */
  async stop(): Promise<void> {
    if (this.exited) return;
    this.kill("SIGKILL");
    await this.waitExit(10_000).catch(() => {});
  }
}

/** GET (or POST) with a deadline; resolves with status and body text. */
export async function http(
  url: string,
  init: RequestInit & { timeoutMs?: number } = {},
): Promise<{ status: number; body: string }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(init.timeoutMs ?? 15_000) });
  return { status: res.status, body: await res.text() };
}

/**
 * GET over a new TCP connection each time (no keep-alive agent), so that a server spreading
 * connections over processes or isolates sees every request as a new connection.
 */
export function getFresh(
  url: string,
  timeoutMs = 15_000,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { agent: false, headers: { connection: "close" } }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
      res.on("error", reject);
    });
    req.setTimeout(
      timeoutMs,
      () => req.destroy(new Error(`GET ${url} timed out after ${timeoutMs} ms`)),
    );
    req.on("error", reject);
    req.end();
  });
}

/**
 * End-to-end HTTP: each runtime's TechEmpower-style app (bench/http/deno_app.ts on
 * `Deno.serve`, bench/http/bun_app.ts on `Bun.serve`) in its pgdbpool variant(s) and its
 * direct-driver variant, loaded by `wrk` at 64 and 256 connections on `/db`, `/queries?n=20`,
 * `/updates?n=20` and `/fortunes`.
 *
 * Variants take turns: per route and connection count, in one order and again in reverse (pool,
 * direct, direct, pool), so drift and a warmer server favour nobody; the ratio compares the
 * mean requests/s of the two runs of each. Every run starts its app afresh, warms it at the
 * run's own route and connection count, measures and stops it: a client that slows down as it
 * ages (postgres.js does under sustained concurrency, see bench/README.md) is measured at its
 * best, as in the other sections, never after the previous routes' load. Before any load, every
 * route of every variant is fetched once and its response checked, so a broken app fails the
 * run instead of being fast.
 * Each run also records the app's own CPU time per request (from `/proc/<pid>/stat`): what a
 * request costs the machine, which moves less than requests/s with where the scheduler puts the
 * app, PostgreSQL and wrk on the shared cores.
 *
 * Used by bench/run.ts (`runHttp`); wrk is Debian's package `wrk` (`apt-get install wrk`).
 *
 * @module
 */

import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import process from "node:process";
import { createInterface } from "node:readline";
import { ENDPOINTS_VAR } from "../names.ts";
import { EXTRA_FORTUNE, FORTUNES, schemaStatements } from "./tfb.ts";

export const WRK = "/usr/bin/wrk";
export const ROUTES = ["/db", "/queries?n=20", "/updates?n=20", "/fortunes"] as const;
export const HTTP_CONNECTIONS = [64, 256] as const;

/** One wrk run. */
export interface WrkSample {
  rps: number;
  p50_ns: number;
  p99_ns: number;
  requests: number;
  /** Socket errors plus non-2xx/3xx responses. */
  errors: number;
  /**
   * CPU time of the app's process (user + system, all its threads) during the run, per request
   * served, in microseconds; absent where `/proc` cannot tell.
   */
  app_cpu_us?: number;
}

/** One route at one connection count for one variant: a sample per run. */
export interface HttpCell {
  route: string;
  connections: number;
  variant: string;
  samples: WrkSample[];
}

/** What the HTTP suite measured on one runtime. */
export interface HttpResults {
  seconds: number;
  warmup_seconds: number;
  wrk: string;
  variants: string[];
  cells: HttpCell[];
  notes: Record<string, string>;
}

/** Where wrk is, or how to get it. */
export function wrkMissing(): string | undefined {
  if (existsSync(WRK)) return undefined;
  return `${WRK} not found: install Debian's wrk (apt-get install wrk) to run the HTTP suite, ` +
    "or pass --skip-http";
}

/** Creates and seeds the World and Fortune tables. */
export async function seed(query: (text: string) => Promise<unknown>): Promise<void> {
  for (const statement of schemaStatements()) await query(statement);
}

const UNIT_NS: Record<string, number> = { us: 1e3, ms: 1e6, s: 1e9, m: 60e9 };

function duration(text: string): number {
  const m = /^([\d.]+)(us|ms|s|m)$/.exec(text.trim());
  if (!m) throw new Error(`wrk: unreadable duration ${text}`);
  return Number(m[1]) * UNIT_NS[m[2]];
}

/** Reads requests/s, p50, p99 and errors from `wrk --latency` output. */
export function parseWrk(out: string): WrkSample {
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(out);
  const p50 = /^\s+50%\s+(\S+)/m.exec(out);
  const p99 = /^\s+99%\s+(\S+)/m.exec(out);
  const requests = /(\d+) requests in/.exec(out);
  if (!rps || !p50 || !p99 || !requests) throw new Error(`wrk: unreadable output:\n${out}`);
  let errors = 0;
  const socket = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(out);
  if (socket) errors += socket.slice(1).reduce((n, x) => n + Number(x), 0);
  const non2xx = /Non-2xx or 3xx responses: (\d+)/.exec(out);
  if (non2xx) errors += Number(non2xx[1]);
  return {
    rps: Number(rps[1]),
    p50_ns: duration(p50[1]),
    p99_ns: duration(p99[1]),
    requests: Number(requests[1]),
    errors,
  };
}

/** Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`, 100 on Linux). */
let clockTicks: number | undefined;

function ticksPerSecond(): number {
  if (clockTicks === undefined) {
    try {
      clockTicks = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());
    } catch {
      clockTicks = NaN;
    }
    if (!(clockTicks > 0)) clockTicks = 100;
  }
  return clockTicks;
}

/** User + system CPU time of process `pid` so far, in microseconds; undefined without `/proc`. */
export function processCpuUs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Fields after the command name, which may itself hold spaces and parentheses.
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const ticks = Number(fields[11]) + Number(fields[12]); // utime, stime (fields 14 and 15)
    return Number.isFinite(ticks) ? ticks / ticksPerSecond() * 1e6 : undefined;
  } catch {
    return undefined;
  }
}

/** One wrk run against `app`, with the app's CPU time per request. */
function measure(app: App, route: string, connections: number, seconds: number): WrkSample {
  const before = processCpuUs(app.child.pid);
  const sample = wrk(`http://127.0.0.1:${app.port}${route}`, connections, seconds);
  const after = processCpuUs(app.child.pid);
  if (before !== undefined && after !== undefined && after > before && sample.requests > 0) {
    sample.app_cpu_us = (after - before) / sample.requests;
  }
  return sample;
}

function wrk(url: string, connections: number, seconds: number): WrkSample {
  // One wrk thread: the machine is shared with the app and the server, and one thread drives
  // a few hundred connections without being the bottleneck.
  const out = execFileSync(
    WRK,
    ["-t1", `-c${connections}`, `-d${seconds}s`, "--timeout", "10s", "--latency", url],
    { encoding: "utf8", timeout: (seconds + 30) * 1000 },
  );
  return parseWrk(out);
}

interface App {
  variant: string;
  port: number;
  child: ChildProcess;
}

/** Apps still running, for `killApps` when the run is interrupted. */
const running = new Set<ChildProcess>();

/** Kills every app this process started and has not stopped yet (on SIGINT / SIGTERM). */
export function killApps(): void {
  for (const child of running) child.kill("SIGKILL");
  running.clear();
}

function startApp(
  command: string,
  args: string[],
  variant: string,
  env: Record<string, string>,
  cwd: string,
): Promise<App> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args, "--variant", variant, "--port", "0"], {
      cwd,
      env: { ...process.env, ...env, NO_COLOR: "1" },
      stdio: ["ignore", "pipe", "inherit"],
    });
    running.add(child);
    child.once("exit", () => running.delete(child));
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${variant} app did not start within 30 s`));
    }, 30_000);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`${variant} app exited with ${code} before it was ready`));
    });
    const lines = createInterface({ input: child.stdout! });
    lines.on("line", (line) => {
      const m = /^READY (\d+)$/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve({ variant, port: Number(m[1]), child });
      } else console.error(`[${variant} app] ${line}`);
    });
  });
}

function stopApp(app: App): Promise<void> {
  return new Promise((resolve) => {
    if (app.child.exitCode !== null) return resolve();
    const timer = setTimeout(() => app.child.kill("SIGKILL"), 5000);
    app.child.removeAllListeners("exit");
    app.child.on("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    app.child.kill("SIGTERM");
  });
}

/** Fetches every route once and checks the response against the test type's rules. */
async function validate(app: App): Promise<void> {
  const base = `http://127.0.0.1:${app.port}`;
  const fail = (what: string) => {
    throw new Error(`${app.variant} app: ${what}`);
  };
  const world = (w: unknown) =>
    typeof w === "object" && w !== null &&
    Number.isInteger((w as { id: unknown }).id) &&
    Number.isInteger((w as { randomNumber: unknown }).randomNumber);
  const db = await (await fetch(`${base}/db`)).json();
  if (!world(db)) fail(`/db returned ${JSON.stringify(db)}`);
  for (const path of ["/queries?n=20", "/updates?n=20"]) {
    const rows = await (await fetch(base + path)).json();
    if (!Array.isArray(rows) || rows.length !== 20 || !rows.every(world)) {
      fail(`${path} returned ${JSON.stringify(rows).slice(0, 200)}`);
    }
  }
  const clamp = await (await fetch(`${base}/queries?n=foo`)).json();
  if (!Array.isArray(clamp) || clamp.length !== 1) fail("/queries?n=foo is not 1 row");
  const response = await fetch(`${base}/fortunes`);
  const html = await response.text();
  const rows = html.match(/<tr><td>/g)?.length ?? 0;
  if (
    !/text\/html; charset=utf-8/i.test(response.headers.get("content-type") ?? "") ||
    rows !== FORTUNES.length + 1 || !html.includes(EXTRA_FORTUNE) ||
    html.includes("<script>") || !html.includes("&lt;script&gt;alert(&quot;")
  ) fail(`/fortunes returned an unexpected page:\n${html.slice(0, 500)}`);
}

/** "wrk 4.1.0-3+b2"; wrk prints its version with the usage and exits 1. */
function wrkVersion(): string {
  let out = "";
  try {
    out = execFileSync(WRK, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  } catch (err) {
    out = String((err as { stdout?: string }).stdout ?? "");
  }
  const m = /wrk \S*?([\d.]+[\w.+~-]*)/.exec(out);
  return m ? `wrk ${m[1]}` : "wrk";
}

/** Options of `runHttp`. */
export interface HttpOptions {
  runtime: "deno" | "bun";
  /** The runtime's binary. */
  binary: string;
  /** Project root (the apps' working directory). */
  root: string;
  endpointsJson: string;
  seconds: number;
  warmupSeconds: number;
  /** Whether the pool accepts `driver: "bun"` (adds the `pool-bun` variant on Bun). */
  bunDriver: boolean;
  log?: (line: string) => void;
}

/** Runs the HTTP suite of one runtime. */
export async function runHttp(o: HttpOptions): Promise<HttpResults> {
  const log = o.log ?? ((line: string) => console.error(line));
  const variants = o.runtime === "bun" && o.bunDriver
    ? ["pool", "pool-bun", "direct"]
    : ["pool", "direct"];
  const [command, args] = o.runtime === "deno"
    ? [o.binary, ["run", "-A", "bench/http/deno_app.ts"]]
    : [o.binary, ["bench/http/bun_app.ts"]];
  const env = { [ENDPOINTS_VAR]: o.endpointsJson };
  // A fresh process per run: started, warmed at the run's own load, measured, stopped.
  const withApp = async <T>(variant: string, use: (app: App) => T | Promise<T>): Promise<T> => {
    const app = await startApp(command, args, variant, env, o.root);
    try {
      return await use(app);
    } finally {
      await stopApp(app);
    }
  };
  const cells = new Map<string, HttpCell>();
  for (const v of variants) await withApp(v, validate);
  let turn = 0;
  for (const route of ROUTES) {
    for (const connections of HTTP_CONNECTIONS) {
      const shift = turn++ % variants.length;
      const order = [...variants.slice(shift), ...variants.slice(0, shift)];
      for (const variant of [...order, ...[...order].reverse()]) {
        const sample = await withApp(variant, (app) => {
          wrk(`http://127.0.0.1:${app.port}${route}`, connections, o.warmupSeconds);
          return measure(app, route, connections, o.seconds);
        });
        const key = `${route}\u0000${connections}\u0000${variant}`;
        const cell = cells.get(key) ?? { route, connections, variant, samples: [] };
        cell.samples.push(sample);
        cells.set(key, cell);
        log(
          `http ${o.runtime} ${route} c=${connections} ${variant}: ` +
            `${sample.rps.toFixed(0)} req/s, p99 ${(sample.p99_ns / 1e6).toFixed(1)} ms` +
            (sample.app_cpu_us ? `, app CPU ${sample.app_cpu_us.toFixed(0)} us/req` : "") +
            (sample.errors ? `, ${sample.errors} errors` : ""),
        );
      }
    }
  }
  return {
    seconds: o.seconds,
    warmup_seconds: o.warmupSeconds,
    wrk: wrkVersion(),
    variants,
    cells: [...cells.values()],
    notes: {},
  };
}

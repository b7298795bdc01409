/**
 * Where the micro-benchmarks run: the PostgreSQL servers on CPU 0, the benchmark processes on
 * the other CPUs. Left to the scheduler, a backend sometimes ran on the core of the client that
 * woke it and sometimes on another, and a single caller's round trip moved by a third with that
 * placement (Bun's `SQL`, one connection, `SELECT 1`: 56 µs against 81 µs for the same client
 * once pinned; every other contender also landed at 80 µs pinned): the ratios said more about
 * where a backend happened to sit than about the clients. Across cores every round trip pays
 * the same wake-up, as it does against a database on another host. The HTTP section stays
 * unpinned: there the app, wrk and PostgreSQL share both cores by design.
 *
 * Linux only (`taskset` from util-linux); elsewhere, or on one CPU, nothing is pinned and the
 * report says so.
 *
 * @module
 */

import { execFileSync } from "node:child_process";
import os from "node:os";
import { childrenByParent, processes } from "./cpu.ts";

/** CPU lists in taskset's syntax. */
export interface Pinning {
  /** CPUs of the PostgreSQL servers ("0"). */
  server: string;
  /** CPUs of the benchmark processes ("1" on two cores, "1-7" on eight). */
  client: string;
  /** Every CPU, to give the servers back before the HTTP section. */
  all: string;
}

/** The placement to use, or why there is none. */
export function pinningPlan(): Pinning | string {
  const cpus = os.cpus().length;
  if (process.platform !== "linux") return `not pinned (${process.platform})`;
  if (cpus < 2) return "not pinned (one CPU)";
  try {
    execFileSync("taskset", ["-p", String(process.pid)], { stdio: "ignore" });
  } catch {
    return "not pinned (taskset not found)";
  }
  const last = cpus - 1;
  return { server: "0", client: last === 1 ? "1" : `1-${last}`, all: `0-${last}` };
}

/** What the report says about the placement. */
export function describePinning(p: Pinning | string): string {
  return typeof p === "string"
    ? p
    : `PostgreSQL on CPU ${p.server}, the benchmark processes on CPU ${p.client}`;
}

/**
 * Moves each root process, its threads and every descendant to `cpus`. Backends forked later
 * by a postmaster inherit its placement.
 */
export function pinProcessTrees(roots: readonly number[], cpus: string): void {
  const children = childrenByParent(processes());
  const pending = [...roots];
  while (pending.length > 0) {
    const pid = pending.pop()!;
    try {
      execFileSync("taskset", ["-a", "-p", "-c", cpus, String(pid)], { stdio: "ignore" });
    } catch {
      // A backend that exited between the scan and here: nothing to move.
    }
    pending.push(...(children.get(pid) ?? []));
  }
}

/** `cmd args` run on the client CPUs when pinning. */
export function onClientCpus(
  p: Pinning | string,
  cmd: string,
  args: string[],
): [string, string[]] {
  return typeof p === "string" ? [cmd, args] : ["taskset", ["-c", p.client, cmd, ...args]];
}

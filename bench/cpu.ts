/**
 * How much CPU other work took while a section of the benchmark ran: the machine's busy time
 * (/proc/stat) minus the time of the benchmark's own processes (this process and everything it
 * started, and the PostgreSQL servers it runs, each with its reaped children). The load average
 * cannot tell: the benchmark alone (app, wrk, ten busy server backends) keeps it near 4 on 2
 * cores, as high as a busy machine's.
 *
 * Linux only; elsewhere `cpuSnapshot` returns undefined and the report falls back to the load
 * average.
 *
 * @module
 */

import { readdirSync, readFileSync } from "node:fs";

/** Cumulative CPU times, in clock ticks. */
export interface CpuSnapshot {
  /** The machine's busy time, all cores. */
  busy: number;
  /** The machine's busy + idle time, all cores. */
  total: number;
  /** Time of the given process trees. */
  ours: number;
}

/** A process as /proc/<pid>/stat shows it. */
export interface Proc {
  ppid: number;
  /** utime + stime + cutime + cstime: its own time and that of the children it reaped. */
  time: number;
}

/** Every process of the machine by pid. */
export function processes(): Map<number, Proc> {
  const out = new Map<number, Proc>();
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, "utf8");
      // The command name is in parentheses and may contain spaces: fields start after ")".
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // f[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14..17.
      const time = Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14]);
      out.set(Number(name), { ppid: Number(f[1]), time });
    } catch {
      // Gone between readdir and read.
    }
  }
  return out;
}

/** The child pids of each process of `procs`. */
export function childrenByParent(procs: Map<number, Proc>): Map<number, number[]> {
  const children = new Map<number, number[]>();
  for (const [pid, p] of procs) children.set(p.ppid, [...(children.get(p.ppid) ?? []), pid]);
  return children;
}

/**
 * A snapshot for the trees rooted at `roots`. A process's time is counted in itself while it
 * lives and in its parent's reaped-children time once it has been waited for, never twice.
 */
export function cpuSnapshot(roots: readonly number[]): CpuSnapshot | undefined {
  let line: string;
  try {
    line = readFileSync("/proc/stat", "utf8").split("\n")[0];
  } catch {
    return undefined;
  }
  // cpu user nice system idle iowait irq softirq steal ...
  const v = line.trim().split(/\s+/).slice(1, 9).map(Number);
  const idle = v[3] + v[4];
  const total = v.reduce((a, b) => a + b, 0);
  const procs = processes();
  const children = childrenByParent(procs);
  let ours = 0;
  const seen = new Set<number>();
  const stack = roots.filter((pid) => procs.has(pid));
  while (stack.length > 0) {
    const pid = stack.pop()!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    ours += procs.get(pid)!.time;
    stack.push(...(children.get(pid) ?? []));
  }
  return { busy: total - idle, total, ours };
}

/** Share of the machine (0..1) that other work used between two snapshots. */
export function foreignShare(a: CpuSnapshot, b: CpuSnapshot): number {
  const total = b.total - a.total;
  // /proc/stat and the processes are read a moment apart: over a window of a few ticks that
  // skew is the whole figure (a section's first sample once read 158693%).
  if (total < MIN_WINDOW_TICKS) return 0;
  return Math.min(1, Math.max(0, (b.busy - a.busy) - (b.ours - a.ours)) / total);
}

/** Shortest window worth a share: one second of one core. */
const MIN_WINDOW_TICKS = 100;

import process from "node:process";
import { Pool as PoolB } from "./patched/mod.ts";
import { callers, endpoints, ourPool, rawClient, warmGroup, warmRaw } from "../env.ts";
const C = Number(process.argv[2] ?? 10);
const a = ourPool("threaded", { q: { connection_count: 10, endpoints: [0] } });
const b = new PoolB({ db: endpoints, groups: { q: { connection_count: 10, endpoints: [0] } } });
await warmGroup(a, "q", 10); await warmGroup(b as never, "q", 10);
const sql = rawClient(10); await warmRaw(sql, 10);
const fns: Record<string, () => Promise<void>> = {
  raw: async () => { await sql.unsafe("SELECT 1", [], { prepare: true }); },
  "handler (src)": async () => { using db = a.handler("q"); await db.query("SELECT 1"); },
  "handler (patched)": async () => { using db = b.handler("q"); await db.query("SELECT 1"); },
};
const res: Record<string, { cpu: number[]; qps: number[] }> = {};
for (let r = 0; r < 4; r++) for (const [name, fn] of Object.entries(fns)) {
  await callers(C, 1000, fn);
  const N = 6000; const c0 = process.cpuUsage(); const t0 = performance.now();
  await callers(C, N, fn);
  const c = process.cpuUsage(c0); const dt = performance.now() - t0;
  (res[name] ??= { cpu: [], qps: [] }).cpu.push((c.user + c.system) / N);
  res[name].qps.push(N / dt * 1000);
}
const med = (x: number[]) => [...x].sort((p, q) => p - q)[x.length >> 1];
for (const [k, v] of Object.entries(res)) console.log(`${C} callers ${k}: client CPU ${med(v.cpu).toFixed(1)} us/query, ${med(v.qps).toFixed(0)} q/s`);
process.exit(0);

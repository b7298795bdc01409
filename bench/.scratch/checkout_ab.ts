import process from "node:process";
import { Pool as PoolA } from "../../mod.ts";
import { Pool as PoolB } from "./patched/mod.ts";
import { endpoints } from "../env.ts";
const groups = { p: { connection_count: 4, endpoints: [0] } };
const a = new PoolA({ db: endpoints, groups, health_check_interval_ms: 0 });
const b = new PoolB({ db: endpoints, groups, health_check_interval_ms: 0 });
for (const p of [a, b]) { const hs = [0,1,2,3].map(() => p.handler("p")); await Promise.all(hs.map((h) => h.query("SELECT 1"))); hs.forEach((h) => h.release()); }
function loopUsing(p: { handler(g: string): Disposable }, n: number) { for (let i = 0; i < n; i++) { using _db = p.handler("p"); } }
function loopRelease(p: { handler(g: string): { release(): void } }, n: number) { for (let i = 0; i < n; i++) { p.handler("p").release(); } }
const res: Record<string, number[]> = {};
for (let r = 0; r < 7; r++) for (const [name, p] of [["src", a], ["patched", b]] as const) for (const [kind, f] of [["using", loopUsing], ["release()", loopRelease]] as const) {
  const N = 3_000_000; f(p as never, 10000); const t0 = performance.now(); f(p as never, N);
  (res[`${name} ${kind}`] ??= []).push((performance.now() - t0) / N * 1e6);
}
for (const [k, v] of Object.entries(res)) { v.sort((x, y) => x - y); console.log(`${k}: median ${v[3].toFixed(1)} ns, min ${v[0].toFixed(1)} ns`); }
process.exit(0);

import process from "node:process";
import { ourPool, warmGroup } from "../env.ts";
const pool = ourPool("threaded", { p: { connection_count: 4, endpoints: [0] } });
await warmGroup(pool, "p", 4);
const mode = process.argv[2] ?? "using";
function usingLoop(n: number) { for (let i = 0; i < n; i++) { using _db = pool.handler("p"); } }
function releaseLoop(n: number) { for (let i = 0; i < n; i++) { const db = pool.handler("p"); db.release(); } }
const f = mode === "using" ? usingLoop : releaseLoop;
const t0 = performance.now(); const N = 30_000_000; f(N);
console.log(mode, ((performance.now() - t0) / N * 1e6).toFixed(1), "ns");
process.exit(0);

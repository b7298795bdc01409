import { ourPool, warmGroup } from "../env.ts";
const pool = ourPool("threaded", { p: { connection_count: 4, endpoints: [0] } });
await warmGroup(pool, "p", 4);
function usingLoop(n: number) { for (let i = 0; i < n; i++) { using _db = pool.handler("p"); } }
function releaseLoop(n: number) { for (let i = 0; i < n; i++) { const db = pool.handler("p"); db.release(); } }
function emptyUsing(n: number) { for (let i = 0; i < n; i++) { using _x = { [Symbol.dispose]() {} }; } }
for (let r = 0; r < 3; r++) {
  for (const [name, f] of [["using handler", usingLoop], ["handler+release()", releaseLoop], ["using {} (empty disposable)", emptyUsing]] as const) {
    const N = 2_000_000;
    const t0 = performance.now(); f(N); const dt = performance.now() - t0;
    console.log(name, (dt / N * 1e6).toFixed(1), "ns");
  }
}
process.exit(0);

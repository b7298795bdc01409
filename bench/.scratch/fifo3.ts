import process from "node:process";
import { ourPool, pgPool, warmGroup, warmPg, callers, percentile } from "../env.ts";
const pool = ourPool("threaded", { c: { connection_count: 10, endpoints: [0] } });
await warmGroup(pool, "c", 10);
const pgp = pgPool(10); await warmPg(pgp, 10);
async function run(name: string, acquire: () => Promise<{ q: () => Promise<unknown>; rel: () => void }>) {
  const rec: { wait: number; seq: number; at: number; loop: number; it: number }[] = [];
  for (let it = 0; it < 8; it++) {
    let seq = 0; const t = performance.now();
    await callers(200, 1000, async () => {
      const my = seq++;
      const t0 = performance.now();
      const c = await acquire();
      rec.push({ wait: performance.now() - t0, seq: my, at: t0 - t, loop: Math.floor(my / 200), it });
      try { await c.q(); } finally { c.rel(); }
    });
  }
  const perIt = [...Array(8).keys()].map((i) => { const w = rec.filter((r) => r.it === i).map((r) => r.wait).sort((a, b) => a - b); return percentile(w, .99).toFixed(0); });
  console.log(name, 'p99 per iteration', perIt.join(' '));
  const waits = rec.map((r) => r.wait).sort((a, b) => a - b);
  const p99 = percentile(waits, .99);
  const tail = rec.filter((r) => r.wait >= p99);
  const byLoop = [0,1,2,3,4].map((l) => tail.filter((r) => r.loop === l).length);
  const meanByLoop = [0,1,2,3,4].map((l) => { const w = rec.filter((r) => r.loop === l).map((r) => r.wait); return (w.reduce((a,b)=>a+b,0)/w.length).toFixed(1); });
  console.log(`${name}: p50 ${percentile(waits, .5).toFixed(1)} p99 ${p99.toFixed(1)}; tail (>=p99) by request round 0..4: ${byLoop}; mean wait by round: ${meanByLoop}; tail 'at' ms: ${tail.slice(0,6).map((r)=>r.at.toFixed(0))}`);
}
for (let r = 0; r < 2; r++) {
  await run("pgdbpool", async () => { const db = await pool.acquire("c"); return { q: () => db.query("SELECT 1"), rel: () => db.release() }; });
  await run("pg-pool ", async () => { const c = await pgp.connect(); return { q: () => c.query("SELECT 1"), rel: () => c.release() }; });
}
process.exit(0);

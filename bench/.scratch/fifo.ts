import { ourPool, pgPool, warmGroup, warmPg, callers, percentile } from "../env.ts";
const pool = ourPool("threaded", { c: { connection_count: 10, endpoints: [0] } });
await warmGroup(pool, "c", 10);
const pgp = pgPool(10); await warmPg(pgp, 10);
async function run(name: string, acquire: () => Promise<{ q: () => Promise<unknown>; rel: () => void }>) {
  const waits: number[] = []; let reqSeq = 0; let grantSeq = 0; let inversions = 0; let maxLag = 0;
  for (let it = 0; it < 10; it++) {
    const t = performance.now();
    await callers(200, 1000, async () => {
      const my = reqSeq++;
      const t0 = performance.now();
      const c = await acquire();
      const g = grantSeq++;
      waits.push(performance.now() - t0);
      if (g - my > maxLag) maxLag = g - my;
      try { await c.q(); } finally { c.rel(); }
    });
    reqSeq = grantSeq = 0;
    if (it === 9) console.log(name, "iteration ms", (performance.now() - t).toFixed(1));
  }
  waits.sort((a, b) => a - b);
  console.log(name, "p50", percentile(waits, .5).toFixed(1), "p99", percentile(waits, .99).toFixed(1), "max", waits.at(-1)!.toFixed(1), "max grant lag (FIFO<=~200)", maxLag);
}
for (let r = 0; r < 2; r++) {
  await run("pgdbpool", async () => { const db = await pool.acquire("c"); return { q: () => db.query("SELECT 1"), rel: () => db.release() }; });
  await run("pg-pool ", async () => { const c = await pgp.connect(); return { q: () => c.query("SELECT 1"), rel: () => c.release() }; });
}
process.exit(0);

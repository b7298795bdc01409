import process from "node:process";
import { ourPool, pgPool, warmGroup, warmPg, callers, percentile } from "../env.ts";
const pool = ourPool("threaded", { c: { connection_count: 10, endpoints: [0] } });
await warmGroup(pool, "c", 10);
const pgp = pgPool(10); await warmPg(pgp, 10);
async function run(name: string, acquire: () => Promise<{ q: () => Promise<unknown>; rel: () => void }>) {
  const waits: number[] = []; let seq = 0; const pending = new Set<number>(); let inversions = 0; let grants = 0;
  const t = performance.now();
  for (let it = 0; it < 8; it++) {
    await callers(200, 1000, async () => {
      const my = seq++; pending.add(my);
      const t0 = performance.now();
      const c = await acquire();
      pending.delete(my); grants++;
      for (const p of pending) { if (p < my) { inversions++; break; } }
      waits.push(performance.now() - t0);
      try { await c.q(); } finally { c.rel(); }
    });
  }
  const dt = performance.now() - t;
  waits.sort((a, b) => a - b);
  console.log(`${name}: ${(grants / dt * 1000).toFixed(0)}/s p50 ${percentile(waits, .5).toFixed(1)} p99 ${percentile(waits, .99).toFixed(1)} max ${waits.at(-1)!.toFixed(1)} ms; grants overtaking an earlier request: ${inversions}/${grants}`);
}
for (let r = 0; r < 2; r++) {
  await run("pgdbpool", async () => { const db = await pool.acquire("c"); return { q: () => db.query("SELECT 1"), rel: () => db.release() }; });
  await run("pg-pool ", async () => { const c = await pgp.connect(); return { q: () => c.query("SELECT 1"), rel: () => c.release() }; });
}
process.exit(0);

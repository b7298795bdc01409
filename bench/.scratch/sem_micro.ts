import { Semaphore } from "../../src/semaphore.ts";
import { SemaphoreFixed } from "./semaphore_fixed.ts";
function run(name: string, s: { tryAcquire(): boolean; release(): void }) {
  const N = 10_000_000;
  for (let i = 0; i < 100000; i++) { s.tryAcquire(); s.release(); }
  const t0 = performance.now();
  for (let i = 0; i < N; i++) { s.tryAcquire(); s.release(); }
  return (performance.now() - t0) / N * 1e6;
}
const rows: Record<string, number[]> = { "src Semaphore": [], "with fix": [] };
for (let r = 0; r < 5; r++) { rows["src Semaphore"].push(run("src", new Semaphore(4))); rows["with fix"].push(run("fix", new SemaphoreFixed(4))); }
for (const [k, v] of Object.entries(rows)) { v.sort((a, b) => a - b); console.log(`${k}: tryAcquire()+release() median ${v[2].toFixed(1)} ns (min ${v[0].toFixed(1)})`); }

import process from "node:process";
import { callers, ourPool, rawClient, warmGroup, warmRaw } from "../env.ts";
const pool = ourPool("threaded", { q: { connection_count: 10, endpoints: [0] } });
await warmGroup(pool, "q", 10);
const sql = rawClient(10); await warmRaw(sql, 10);
const which = process.argv[2] ?? "handler";
const count = Number(process.argv[3] ?? 100);
async function viaHandler() { using db = pool.handler("q"); await db.query("SELECT 1"); }
async function viaRaw() { await sql.unsafe("SELECT 1", [], { prepare: true }); }
const fn = which === "raw" ? viaRaw : viaHandler;
const t0 = performance.now(); let n = 0;
while (performance.now() - t0 < 3000) { await callers(count, 1000, fn); n += 1000; }
console.log(which, count, "callers:", (n / ((performance.now() - t0) / 1000)).toFixed(0), "q/s");
process.exit(0);

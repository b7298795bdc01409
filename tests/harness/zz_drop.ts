import postgres from "postgres";
import process from "node:process";
import { startCluster } from "./cluster.ts";
import { startProxy } from "./proxy.ts";
import { waitFor } from "./wait.ts";
let unhandled = 0;
process.on("unhandledRejection", (e: any) => { unhandled++; console.log("  UNHANDLED", e?.code, e?.message); });
const c = await startCluster();
const proxy = await startProxy(c.primary);
const codes: Record<string, number> = {};
for (let i = 0; i < 30; i++) {
  const sql = postgres({ host: proxy.host, port: proxy.port, user: c.user, pass: c.password, database: c.database, max: 1, connection: { application_name: "d" } });
  const p = sql`select pg_sleep(30)`; p.catch(() => {});
  await waitFor(async () => (await c.countConnections({ applicationName: "d" })) === 1);
  proxy.dropAll();
  try { await p; } catch (e) { const k = String((e as any).code); codes[k] = (codes[k] ?? 0) + 1; }
  await sql.end({ timeout: 1 });
  await waitFor(async () => (await c.countConnections({ applicationName: "d" })) === 0);
}
console.log(codes, "unhandled", unhandled);
await proxy.close(); await c.close();

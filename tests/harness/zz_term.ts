import postgres from "postgres";
import process from "node:process";
import { startCluster } from "./cluster.ts";
import { startProxy } from "./proxy.ts";
import { waitFor } from "./wait.ts";
process.on("unhandledRejection", (e: any) => console.log("  UNHANDLED", e?.code, e?.message));
const c = await startCluster();
const proxy = await startProxy(c.primary);
for (let i = 0; i < 3; i++)
for (const [label, at, delay] of [["direct", c.primary, 0], ["proxy0", proxy, 0], ["proxy50", proxy, 50]] as const) {
  proxy.delayMs = delay;
  const sql = postgres({ host: at.host, port: at.port, user: c.user, pass: c.password, database: c.database, max: 1, connection: { application_name: "k" } });
  const p = sql`select pg_sleep(30)`; p.catch(() => {});
  await waitFor(async () => (await c.countConnections({ applicationName: "k" })) === 1);
  await c.primary.query("select pg_terminate_backend(pid) from pg_stat_activity where application_name = 'k'");
  try { await p; } catch (e) { console.log(label, (e as any).code, (e as any).message); }
  await new Promise((r) => setTimeout(r, 200));
  await sql.end({ timeout: 1 });
}
await proxy.close(); await c.close();

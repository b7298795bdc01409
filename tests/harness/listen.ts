/**
 * Faults and checks for `pool.listen()` tests: the pool's LISTEN session on a server, and a
 * LISTEN held back on its way there.
 *
 * @module
 */
import type { PgCluster } from "./cluster.ts";
import { poolSessions } from "./faults.ts";
import type { TcpProxy } from "./proxy.ts";

/** The LISTEN sessions of the pool named `app` (their application_name is `app/listen`). */
export async function listenSessions(
  cluster: PgCluster,
  app: string,
): ReturnType<typeof poolSessions> {
  return (await poolSessions(cluster, app)).filter((s) => s.applicationName === `${app}/listen`);
}

/**
 * Stalls, from now on, every client's bytes from its `LISTEN "channel"` on (that LISTEN never
 * reaches the server; other clients pass). `hit` turns true at the first stall.
 */
export function stallListen(proxy: TcpProxy, channel: string): { hit: boolean } {
  const cut = { hit: false };
  const needle = `LISTEN ${JSON.stringify(channel)}`;
  proxy.cutClientChunk = (chunk) => {
    if (!new TextDecoder().decode(chunk).includes(needle)) return chunk.length;
    cut.hit = true;
    return 0;
  };
  return cut;
}

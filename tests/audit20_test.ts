// Defects found by audit 20 (read-your-writes tokens under faults), each proven against real
// servers and real faults.
import { after, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { pauseReplay, poolSessions, resumeReplay, terminate } from "./harness/faults.ts";
import { startProxy, type TcpProxy } from "./harness/proxy.ts";
import { waitFor } from "./harness/wait.ts";
import { Pool } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;
let starting: Promise<PgCluster> | undefined;
const servers = () => starting ??= startCluster({ replicas: 1 }).then((c) => cluster = c);

after(async () => {
  await (await starting)?.close();
}, { timeout: 60_000 });

const encoder = new TextEncoder();

/** Where `needle` starts in `hay`, or -1. */
function indexOf(hay: Uint8Array, needle: Uint8Array, from = 0): number {
  outer: for (let i = from; i + needle.length <= hay.length; i++) {
    for (let j = 0; j < needle.length; j++) if (hay[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
}

/**
 * The end of the client's statement `text` in `chunk` (whole frontend messages): right after its
 * simple Query message, or after the Sync that follows its Parse; -1 when the chunk holds none.
 */
function afterStatement(chunk: Uint8Array, text: string): number {
  const view = new DataView(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  const commit = encoder.encode(`${text}\0`);
  let at = 0;
  let seen = false;
  while (at + 5 <= chunk.length) {
    const type = String.fromCharCode(chunk[at]!);
    const end = at + 1 + view.getUint32(at + 1);
    if (!seen && indexOf(chunk.subarray(at, end), commit) >= 0) {
      if (type === "Q") return end;
      seen = true;
    } else if (seen && type === "S") return end;
    at = end;
  }
  return -1;
}

/**
 * Relays the client's bytes up to the end of `text` and stalls what follows it (the token query
 * pipelined behind it) until `releaseClients()`; the answer is true once a server chunk with
 * the command tag `tag` has been relayed after that cut.
 */
function stallAfter(proxy: TcpProxy, text: string, tag: string): () => boolean {
  let stallNext = false;
  let cut = false;
  let acknowledged = false;
  proxy.cutClientChunk = (chunk) => {
    if (stallNext) {
      proxy.cutClientChunk = undefined;
      return 0;
    }
    const end = afterStatement(chunk, text);
    if (end < 0) return chunk.length;
    cut = true;
    if (end < chunk.length) proxy.cutClientChunk = undefined;
    else stallNext = true;
    return end;
  };
  const complete = encoder.encode(`${tag}\0`);
  proxy.onServerChunk = (chunk) => {
    if (cut && indexOf(chunk, complete) >= 0) acknowledged = true;
  };
  return () => acknowledged;
}

describe("read-your-writes: a commit whose token query is lost", () => {
  // What was wrong: db.commit() sends COMMIT with the token query pipelined behind it. When the
  // connection was lost after the COMMIT's acknowledgement but before the token query's answer,
  // commit() resolved to undefined: an acknowledged commit with no token, so the caller's
  // `{ after: token }` read became a plain read that a lagging replica answers without the
  // write (and pool.token did not move either).
  it("still resolves to a token that reads the write", async () => {
    await servers();
    await cluster.primary.query("CREATE TABLE IF NOT EXISTS audit20_lost_token (id int)");
    const app = "audit20-lost-token";
    const proxy = await startProxy(cluster.primary);
    const [primary, replica] = cluster.endpoints();
    const p = new Pool({
      db: [
        { ...primary!, host: proxy.host, port: proxy.port, prepare: false },
        replica!,
      ],
      groups: {
        w: { connection_count: 1, autocommit: false },
        r: { connection_count: 1, role: "replica", read_your_writes_timeout_ms: 300 },
      },
      application_name: app,
    });
    try {
      const db = p.handler("w");
      await db.query("INSERT INTO audit20_lost_token VALUES (1)");
      // The replica will not have the write: only a token sends the read elsewhere.
      await pauseReplay(cluster.replicas[0]!);
      // The COMMIT reaches the server; the token query behind it is stalled in the proxy.
      const acknowledged = stallAfter(proxy, "COMMIT", "COMMIT");
      const committed = db.commit();
      committed.catch(() => {});
      await waitFor(() => acknowledged(), { timeoutMs: 10_000, message: "COMMIT acknowledged" });
      // The backend, idle now, is terminated before the token query reaches it.
      const mine = (await poolSessions(cluster, app)).filter((s) => s.applicationName === app);
      assert.equal(mine.length, 1, "one pooled session");
      assert.equal((await terminate(mine)).length, 1);
      const token = await committed;
      proxy.releaseClients();
      db.release();
      const [{ n }] = await cluster.primary.query(
        "SELECT count(*)::int AS n FROM audit20_lost_token WHERE id = 1",
      );
      assert.equal(n, 1, "the commit was acknowledged and is durable");
      assert.equal(typeof token, "string", `commit() resolved to a token (got ${token})`);
      assert.equal(p.token, token);
      await using reader = p.handler("r", { after: token });
      const rows = await reader.query("SELECT count(*)::int AS n FROM audit20_lost_token");
      assert.equal(rows[0]!.n, 1, "the {after} read sees the write");
    } finally {
      await resumeReplay(cluster.replicas[0]!);
      proxy.cutClientChunk = undefined;
      proxy.onServerChunk = undefined;
      proxy.releaseClients();
      await p.close();
      await proxy.close();
    }
  });
});

describe("read-your-writes: a one-shot write whose token query is lost", () => {
  // What was wrong: pool.query pipelines the token query behind an autocommit write. When the
  // connection was lost after the write's acknowledgement but before the token query's answer,
  // pool.query resolved (the write stands) but pool.token stayed where it was: a read
  // `{ after: pool.token }` did not wait for that write.
  it("moves pool.token past the write", async () => {
    await servers();
    await cluster.primary.query("CREATE TABLE IF NOT EXISTS audit20_lost_token (id int)");
    const app = "audit20-lost-token-one-shot";
    const proxy = await startProxy(cluster.primary);
    const [primary] = cluster.endpoints();
    const p = new Pool({
      db: [{ ...primary!, host: proxy.host, port: proxy.port, prepare: false }],
      groups: { w: { connection_count: 1 } },
      application_name: app,
    });
    try {
      await p.query("w", "SELECT 1");
      const text = "INSERT INTO audit20_lost_token VALUES (2)";
      const acknowledged = stallAfter(proxy, text, "INSERT 0 1");
      const written = p.query("w", text);
      written.catch(() => {});
      await waitFor(() => acknowledged(), { timeoutMs: 10_000, message: "INSERT acknowledged" });
      // At or past the end of the write's commit record: the token must be too.
      const [{ lsn }] = await cluster.primary.query(
        "SELECT pg_current_wal_insert_lsn()::text AS lsn",
      );
      const mine = (await poolSessions(cluster, app)).filter((s) => s.applicationName === app);
      assert.equal(mine.length, 1, "one pooled session");
      assert.equal((await terminate(mine)).length, 1);
      await written;
      proxy.releaseClients();
      const token = p.token;
      assert.equal(typeof token, "string", `pool.token moved (got ${token})`);
      const [{ past }] = await cluster.primary.query(
        "SELECT $1::pg_lsn >= $2::pg_lsn AS past",
        [token, lsn],
      );
      assert.equal(past, true, `token ${token} is past ${lsn}`);
      const [{ n }] = await cluster.primary.query(
        "SELECT count(*)::int AS n FROM audit20_lost_token WHERE id = 2",
      );
      assert.equal(n, 1, "the write was acknowledged and is durable");
    } finally {
      proxy.cutClientChunk = undefined;
      proxy.onServerChunk = undefined;
      proxy.releaseClients();
      await p.close();
      await proxy.close();
    }
  });
});

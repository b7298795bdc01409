// An edge Pool kept at module scope in real workerd, used by more than one request. workerd
// binds a socket to the request that opened it ("Cannot perform I/O on behalf of a different
// request"): a one-shot of a second request pipelined onto the first request's connection never
// settled (concurrent requests), or failed with workerd's raw error, read as a statement the
// server ran and refused (sequential requests), though nothing had been sent. Whatever the pool
// does with such a connection, every request must answer within a deadline: with its rows, or
// with an error of the pool's that says what happened.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { freePorts } from "./harness/exec.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { bundleWorker, startWorkerd, stopWorkerd } from "./harness/workerd.ts";
import { http, ROOT, type Service } from "./tools.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;
let dir: string;
let workerd: Service | undefined;
let base: string;
let proxy: TcpProxy;

function capnpConfig(port: number, endpoints: unknown): string {
  // JSON string literals are valid capnp string literals.
  const text = (s: string) => JSON.stringify(s);
  return `using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "main", worker = .worker),
    # The tests' PostgreSQL servers listen on 127.0.0.1, which workers may not reach by default.
    (name = "internet", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:${port}", http = (), service = "main")],
);

const worker :Workerd.Worker = (
  modules = [(name = "worker.js", esModule = embed "worker.js")],
  compatibilityDate = "2025-09-01",
  compatibilityFlags = ["nodejs_compat"],
  bindings = [(name = "DB_ENDPOINTS", text = ${text(JSON.stringify(endpoints))})],
);
`;
}

before(async () => {
  cluster = await startCluster({ replicas: 0 });
  proxy = await startProxy(cluster.endpoints()[0]);
  dir = mkdtempSync(join(tmpdir(), "pgdbpool-audit23-"));
  await bundleWorker(
    join(ROOT, "tests", "fixtures", "module_pool_worker.ts"),
    join(dir, "worker.js"),
  );
  const [port] = await freePorts(1);
  base = `http://127.0.0.1:${port}`;
  // `?via=1`: the same server through the proxy, which a test can silence.
  const [primary] = cluster.endpoints();
  writeFileSync(join(dir, "config.capnp"), capnpConfig(port, [primary, behind(proxy, primary)]), {
    mode: 0o600,
  });
  workerd = await startWorkerd(dir, base);
}, { timeout: 120_000 });

after(async () => {
  await stopWorkerd(workerd);
  await proxy?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
  await cluster?.close();
}, { timeout: 60_000 });

type Answer = { tag?: string; error?: { name: string; message: string; outcome?: string } };

/** One request's one-shot; the worker answers "HUNG" when the statement has not settled. */
async function query(
  pool: string,
  tag: string,
  sleepS: number,
  extra = "",
): Promise<Answer | "HUNG"> {
  const res = await http(
    `${base}/query?pool=${pool}&tag=${tag}&sleep=${sleepS}&deadline_ms=15000${extra}`,
    { timeoutMs: 25_000 },
  );
  assert.equal(res.status, 200, `${tag}: ${res.status} ${res.body}\n${workerd?.output}`);
  return JSON.parse(res.body);
}

/** The request's rows, or an error of the pool's own: never a hang, never workerd's raw error. */
function assertAnswered(tag: string, answer: Answer | "HUNG"): void {
  assert.notEqual(answer, "HUNG", `${tag}: the one-shot neither resolved nor rejected in 15 s`);
  const { error } = answer as Answer;
  if (error === undefined) {
    assert.equal((answer as Answer).tag, tag);
    return;
  }
  // workerd's own refusal is a bare Error: the pool's errors have names of their own.
  assert.notEqual(error.name, "Error", `${tag}: a bare Error: ${error.message}`);
  // Nothing ran that the server refused: only outcomes that say so are acceptable.
  if (error.outcome !== undefined) assert.notEqual(error.outcome, "failed");
}

describe("a module-scope edge Pool in workerd", () => {
  // The second request's statement joins the first's connection: postgres.js queues it and
  // writes it from the first request (whose read of the answer before it is what sends it), the
  // server runs it, and its answer is read by the first request, which may have ended by then:
  // workerd stops a finished request's reads and timers, so neither the answer nor the close
  // ever reaches the second. A statement that joins a busy connection on workerd therefore arms
  // a timer of its own request, and each connection beats a timer in the request that opened it
  // (src/request_bound.ts): once that beat stops, the connection is cut and the second request
  // hears that its statement may have run (SessionLostError, outcome "unknown").
  it("answers two concurrent requests, the second pipelined onto the first's connection", async () => {
    const first = query("concurrent", "A", 1);
    // The second request arrives while the first one's statement runs on the only connection.
    await waitFor(
      async () =>
        (await cluster.primary.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = 'audit23' AND state = 'active'",
        )).length > 0,
      { timeoutMs: 10_000, message: "the first request's statement running" },
    );
    const second = query("concurrent", "B", 0);
    assertAnswered("A", await first);
    assertAnswered("B", await second);
    // The connection cut under B was discarded and its permit returned (the group has one): a
    // third request gets a connection of its own. Had A's request read B's answer before it
    // ended, A's connection would still be there: F then loses it (never a timeout for want of
    // the permit), and G opens its own.
    const f = await query("concurrent", "F", 0);
    if (f !== "HUNG" && f.error !== undefined) {
      assert.equal(f.error.name, "SessionLostError", JSON.stringify(f));
      assert.deepEqual(await query("concurrent", "G", 0), { tag: "G" });
    } else {
      assert.deepEqual(f, { tag: "F" });
    }
  });

  it("cuts nothing while the request that opened the connection runs", async () => {
    // A's statement outlives the guard B's statement arms (connect_timeout, 2 s) twice over; A's
    // connection beats in A's request all along, so nothing is cut under A: its rows come back.
    const first = query("long", "A", 5);
    await waitFor(
      async () =>
        (await cluster.primary.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = 'audit23' AND state = 'active'",
        )).length > 0,
      { timeoutMs: 10_000, message: "the first request's statement running" },
    );
    const second = query("long", "B", 0);
    assert.deepEqual(await first, { tag: "A" });
    assertAnswered("B", await second);
  });

  it("answers a request after the one that opened the connection has ended", async () => {
    // C opens the connection; D finds it, its request gone; E comes after D's answer.
    assert.deepEqual(await query("sequential", "C", 0), { tag: "C" });
    assertAnswered("D", await query("sequential", "D", 0));
    // The dead connection is not kept: E opens one of its own (which fails the request after
    // it in turn, as D's did: a connection serves only the request that opened it).
    assert.deepEqual(await query("sequential", "E", 0), { tag: "E" });
  });

  it("cuts off a later request's statement when its host goes silent", async () => {
    // G's statement arms the server's watchdog (background probing is off on the edge) in G's
    // request, which ends before it fires: that timer never fires, and it used to stay armed for
    // good, so no later statement armed one and a server gone silent under it was never probed.
    const armedAt = performance.now();
    assert.deepEqual(await query("silent", "G", 0, "&via=1"), { tag: "G" });
    // A watchdog is armed afresh once the dead one is overdue by a whole period (2 x the
    // worker's connect_timeout of 2 s after G's statement); time itself is the condition here.
    await waitFor(() => performance.now() - armedAt > 4_500, {
      timeoutMs: 10_000,
      message: "the dead watchdog overdue",
    });
    // H's statement runs on a connection of its own (another group: G's connection serves only
    // G's request), and its host goes silent under it.
    const h = query("silent", "H", 30, "&via=1&group=other");
    await waitFor(
      async () =>
        (await cluster.primary.query(
          "SELECT 1 FROM pg_stat_activity WHERE application_name = 'audit23' AND state = 'active' AND query LIKE '%pg_sleep%'",
        )).length > 0,
      { timeoutMs: 10_000, message: "H's statement running" },
    );
    proxy.mode = "blackhole";
    try {
      const answer = await h;
      assertAnswered("H", answer);
      // Its statement was running: cut off, its outcome unknown (never its rows: the host is
      // silent).
      assert.equal((answer as Answer).error?.name, "SessionLostError", JSON.stringify(answer));
    } finally {
      proxy.mode = "pass";
    }
  });
});

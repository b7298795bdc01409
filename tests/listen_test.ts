// pool.listen(): one dedicated session on the primary for every channel, quoted channel names,
// re-subscription after a killed backend and after a failover, and nothing left after close().
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { poolSessions } from "./harness/faults.ts";
import { listenSessions, stallListen } from "./harness/listen.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { waitFor } from "./harness/wait.ts";
import { NoEndpointAvailableError, Pool, type PoolConfig } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
  await cluster.primary.query("CREATE TABLE listen_guard (id int)");
  await cluster.waitForReplication();
}, { timeout: 180_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(app: string, extra: Partial<PoolConfig> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { write: { connection_count: 1, role: "primary" } },
    application_name: app,
    ...extra,
  });
}

/** The primary's endpoint, reached through `proxy`. */
const viaProxy = (proxy: TcpProxy) => behind(proxy, cluster.endpoints()[0]);

type Settled<T> =
  | { state: "resolved"; value: T }
  | { state: "rejected"; error: unknown }
  | { state: "pending" };

/** How `promise` stands after at most `ms`: a hang is a test failure, not a test hang. */
async function settleWithin<T>(promise: Promise<T>, ms: number): Promise<Settled<T>> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const outcome = await Promise.race([
    promise.then(
      (value): Settled<T> => ({ state: "resolved", value }),
      (error: unknown): Settled<T> => ({ state: "rejected", error }),
    ),
    new Promise<Settled<T>>((resolve) =>
      timer = setTimeout(() => resolve({ state: "pending" }), ms)
    ),
  ]);
  clearTimeout(timer);
  return outcome;
}

describe("pool.listen", () => {
  it("delivers notifications of every channel over one session outside the groups", async () => {
    await using p = pool("l1");
    const got: string[] = [];
    // Quotes, a semicolon and SQL in the name: it is an identifier, never SQL.
    const weird = `we"ird'; DROP TABLE listen_guard; --`;
    const a = await p.listen("orders", (payload) => got.push(`a:${payload}`));
    const b = await p.listen("orders", (payload) => got.push(`b:${payload}`));
    const c = await p.listen(weird, (payload) => got.push(`c:${payload}`));
    assert.equal(a.channel, "orders");
    await p.query("write", "SELECT pg_notify('orders', 'one'), pg_notify($1, 'two')", [weird]);
    await waitFor(() => got.length === 3, { message: "three deliveries" });
    assert.deepEqual(got.sort(), ["a:one", "b:one", "c:two"]);
    assert.equal(
      (await cluster.primary.query("SELECT count(*)::int AS n FROM listen_guard"))[0].n,
      0,
    );
    assert.equal(
      (await listenSessions(cluster, "l1")).length,
      1,
      "one LISTEN session for every channel",
    );
    assert.equal(p.stats().groups.write.open, 1, "the group's own budget is untouched");

    await a.unlisten();
    got.length = 0;
    await p.query("write", "SELECT pg_notify('orders', 'again')");
    await waitFor(() => got.length === 1, { message: "delivery to the remaining subscriber" });
    assert.deepEqual(got, ["b:again"]);
    await b.unlisten();
    await c[Symbol.asyncDispose]();
    await waitFor(async () => (await listenSessions(cluster, "l1")).length === 0, {
      message: "the LISTEN session ends with the last subscription",
    });
  });

  it("refuses channel names PostgreSQL cannot carry, naming the value", async () => {
    await using p = pool("l2");
    await assert.rejects(
      p.listen("", () => {}),
      (e: unknown) => e instanceof TypeError && e.message.includes('""'),
    );
    await assert.rejects(
      p.listen("x".repeat(64), () => {}),
      (e: unknown) => e instanceof RangeError && e.message.includes("63 bytes"),
    );
    await assert.rejects(
      p.listen("ok", "nope" as unknown as () => void),
      (e: unknown) => e instanceof TypeError && e.message.includes("onNotify"),
    );
  });

  it("a first subscription whose primary goes silent fails with NoEndpointAvailableError, then works", async () => {
    // The caller must learn it is not subscribed, with the error every other checkout gives
    // when no server can serve it (not a driver's internal one), within the probe deadline.
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l2b", { db: [viaProxy(proxy)] });
      await p.query("write", "SELECT 1");
      let lost = 0;
      p.addEventListener("listenlost", () => lost++);
      proxy.mode = "blackhole";
      const started = performance.now();
      const err = await p.listen("silent", () => {}).then(() => undefined, (e: unknown) => e);
      const ms = Math.round(performance.now() - started);
      assert.ok(err instanceof NoEndpointAvailableError, `rejected with ${err}`);
      assert.ok(err.message.includes(`${proxy.host}:${proxy.port}`), err.message);
      assert.ok(ms < 5_000, `rejected after ${ms} ms`);
      assert.equal(lost, 0, "listenlost is for subscriptions that were made");
      proxy.mode = "pass";
      const got: string[] = [];
      await waitFor(
        () => p.listen("silent", (x) => got.push(x)).then(() => true, () => false),
        { timeoutMs: 15_000, message: "a subscription once the primary answers again" },
      );
      await p.query("write", "SELECT pg_notify('silent', 'back')");
      await waitFor(() => got.length === 1, { message: "the notification delivered" });
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
  });

  it("re-subscribes after its backend is killed, with listenlost / listenrestored", async () => {
    await using p = pool("l3");
    const events: string[] = [];
    p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
    p.addEventListener(
      "listenrestored",
      (e) => events.push(`restored ${e.detail.endpoint.port} ${e.detail.channels.join(",")}`),
    );
    const got: string[] = [];
    await p.listen("kill", (payload) => got.push(payload));
    await cluster.primary.query(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'l3/listen'",
    );
    await waitFor(() => events.some((e) => e.startsWith("restored")), {
      message: "LISTEN restored after the kill",
    });
    assert.match(events[0], /^lost /);
    assert.equal(events[1], `restored ${cluster.primary.port} kill`);
    await p.query("write", "SELECT pg_notify('kill', 'after')");
    await waitFor(() => got.includes("after"), { message: "delivery after the kill" });
  });

  it("replaces a LISTEN session whose backend hangs while the server still answers", async () => {
    // A stopped backend keeps its TCP connection open (the kernel still acknowledges), and the
    // server's other sessions, probes included, answer: only a heartbeat on the LISTEN session
    // itself can tell that notifications stopped coming. Default heartbeat, short probe deadline.
    await using p = pool("l3h", { probe_timeout_ms: 1000 });
    const events: string[] = [];
    p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
    p.addEventListener("listenrestored", (e) => events.push(`restored ${e.detail.channels}`));
    const got: string[] = [];
    await p.listen("hang", (payload) => got.push(payload));
    const [{ pid }] = await cluster.primary.query(
      "SELECT pid FROM pg_stat_activity WHERE application_name = 'l3h/listen'",
    );
    const started = performance.now();
    process.kill(pid as number, "SIGSTOP");
    try {
      await waitFor(() => events.some((e) => e.startsWith("restored")), {
        timeoutMs: 12_000,
        message: "LISTEN moved off the hung backend",
      });
    } finally {
      process.kill(pid as number, "SIGCONT");
    }
    const ms = Math.round(performance.now() - started);
    assert.match(events[0], /^lost .*heartbeat/);
    assert.equal(events[1], "restored hang");
    // Default heartbeat (5000 ms) plus the 1000 ms deadline, with room for a slow machine.
    assert.ok(ms < 9_000, `restored ${ms} ms after the backend hung`);
    await p.query("write", "SELECT pg_notify('hang', 'after')");
    await waitFor(() => got.includes("after"), { message: "delivery on the new session" });
    await waitFor(async () => (await listenSessions(cluster, "l3h")).length === 1, {
      message: "the hung backend's session ends",
    });
  });

  it("with probes off, a LISTEN session on a path gone silent is replaced after the partition", async () => {
    // Nothing else watches the server here (health_check_interval_ms: 0): without a heartbeat
    // the subscription would wait on an open socket until TCP keepalive gave up (minutes), and
    // the application would never learn it may have missed notifications.
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l3p", {
        db: [viaProxy(proxy)],
        health_check_interval_ms: 0,
        listen_heartbeat_ms: 300,
        probe_timeout_ms: 500,
      });
      const events: string[] = [];
      p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
      p.addEventListener("listenrestored", () => events.push("restored"));
      const got: string[] = [];
      await p.listen("partition", (payload) => got.push(payload));
      proxy.mode = "blackhole";
      const started = performance.now();
      await waitFor(() => events.length > 0, { message: "listenlost during the partition" });
      const ms = Math.round(performance.now() - started);
      assert.match(events[0], /^lost no answer to a heartbeat within 500 ms/);
      assert.ok(ms < 3_000, `listenlost ${ms} ms into the partition`);
      proxy.mode = "pass";
      await waitFor(() => events.includes("restored"), {
        timeoutMs: 20_000,
        message: "listenrestored once the partition heals",
      });
      await p.query("write", "SELECT pg_notify('partition', 'healed')");
      await waitFor(() => got.includes("healed"), { message: "delivery after the partition" });
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
  });

  it("a first subscription whose LISTEN gets no answer fails within the probe deadline", async () => {
    // The path of the LISTEN session stalls right at its LISTEN while the server answers
    // everything else (probes included): only a deadline on the LISTEN itself ends the wait.
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l7", { db: [viaProxy(proxy)], probe_timeout_ms: 1000 });
      await p.query("write", "SELECT 1");
      let lost = 0;
      p.addEventListener("listenlost", () => lost++);
      const cut = stallListen(proxy, "hang1");
      const started = performance.now();
      const outcome = await settleWithin(p.listen("hang1", () => {}), 8_000);
      const ms = Math.round(performance.now() - started);
      assert.ok(cut.hit, "the LISTEN was stalled");
      assert.ok(outcome.state === "rejected", `listen() ${outcome.state} after ${ms} ms`);
      assert.ok(
        outcome.error instanceof NoEndpointAvailableError,
        `rejected with ${outcome.error}`,
      );
      assert.match(outcome.error.message, /no answer to LISTEN within 1000 ms/);
      assert.equal(lost, 0, "listenlost is for subscriptions that were made");
      // Later sessions pass (the stalled one stays stalled): a subscription works again.
      proxy.cutClientChunk = undefined;
      const got: string[] = [];
      await p.listen("hang1", (x) => got.push(x));
      await cluster.primary.query("SELECT pg_notify('hang1', 'after')");
      await waitFor(() => got.includes("after"), { message: "delivery on a new session" });
    } finally {
      proxy.cutClientChunk = undefined;
      await proxy.close();
    }
  });

  it("a re-subscription whose LISTEN gets no answer is retried until restored", async () => {
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l8", { db: [viaProxy(proxy)], probe_timeout_ms: 1000 });
      const events: string[] = [];
      p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
      p.addEventListener("listenrestored", () => events.push("restored"));
      const got: string[] = [];
      const sub = await p.listen("hang2", (x) => got.push(x));
      const cut = stallListen(proxy, "hang2");
      await cluster.primary.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'l8/listen'",
      );
      await waitFor(() => cut.hit, { message: "the re-subscription's LISTEN stalled" });
      // The stalled session stays stalled; a new one would pass.
      proxy.cutClientChunk = undefined;
      await waitFor(() => events.includes("restored"), {
        timeoutMs: 15_000,
        message: "listenrestored on a new session after the stalled LISTEN's deadline",
      });
      assert.match(events[0], /^lost /);
      await cluster.primary.query("SELECT pg_notify('hang2', 'restored')");
      await waitFor(() => got.includes("restored"), { message: "delivery after the retry" });
      const unlistened = await settleWithin(sub.unlisten(), 5_000);
      assert.equal(unlistened.state, "resolved");
    } finally {
      proxy.cutClientChunk = undefined;
      await proxy.close();
    }
  });

  it("a channel whose listen() failed is not left listened on the session that replaced it", async () => {
    // The LISTEN of a second channel gets no answer: its session is lost and replaced, and the
    // replacement listens to every channel known at that moment, the failing one included (its
    // caller has not heard the failure yet). Its caller is told listen() failed, so nothing may
    // stay listened on its behalf: the server would go on sending what nobody receives.
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l8b", { db: [viaProxy(proxy)], probe_timeout_ms: 1000 });
      let restored = 0;
      p.addEventListener("listenrestored", () => restored++);
      const got: string[] = [];
      await p.listen("kept", (x) => got.push(x));
      // Every (UN)LISTEN of "gone" the clients send, in order; the first LISTEN is stalled.
      const sent: string[] = [];
      let stalled = false;
      proxy.cutClientChunk = (chunk) => {
        const text = new TextDecoder().decode(chunk);
        for (const m of text.matchAll(/(UN)?LISTEN "gone"/g)) sent.push(m[0]);
        if (stalled || !sent.includes('LISTEN "gone"')) return chunk.length;
        stalled = true;
        return 0;
      };
      const outcome = await settleWithin(p.listen("gone", () => {}), 8_000);
      assert.ok(outcome.state === "rejected", `listen("gone") ${outcome.state}`);
      await waitFor(() => restored === 1, { message: "listenrestored for the kept channel" });
      await waitFor(() => sent.at(-1) !== 'LISTEN "gone"', {
        timeoutMs: 5_000,
        message: `an UNLISTEN after the last LISTEN of the failed channel (sent: ${sent})`,
      });
      await cluster.primary.query("SELECT pg_notify('kept', 'still')");
      await waitFor(() => got.includes("still"), { message: "the kept channel delivers" });
    } finally {
      proxy.cutClientChunk = undefined;
      await proxy.close();
    }
  });

  it("an aborted signal ends a listen() whose LISTEN is not answered", async () => {
    // A probe deadline longer than the test: only the signal can end the wait.
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l9", {
        db: [{ ...viaProxy(proxy), connect_timeout: 30 }],
        probe_timeout_ms: 30_000,
      });
      await p.query("write", "SELECT 1");
      const cut = stallListen(proxy, "hang3");
      const aborted = new AbortController();
      const pending = p.listen("hang3", () => {}, { signal: aborted.signal });
      await waitFor(() => cut.hit, { message: "the LISTEN stalled" });
      const reason = new Error("gave up");
      aborted.abort(reason);
      const outcome = await settleWithin(pending, 3_000);
      assert.ok(outcome.state === "rejected", `listen() ${outcome.state} after its signal aborted`);
      assert.equal(outcome.error, reason);
    } finally {
      proxy.cutClientChunk = undefined;
      await proxy.close();
    }
  });

  it("a second subscription to a channel whose LISTEN is in flight resolves once listened", async () => {
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l10", {
        db: [viaProxy(proxy)],
        health_check_interval_ms: 0,
        listen_heartbeat_ms: 0,
      });
      await p.listen("a", () => {}); // the LISTEN session exists
      proxy.delayMs = 300; // its path is slow, not dead
      const got: string[] = [];
      const first = p.listen("x", (v) => got.push(`1:${v}`));
      const second = await p.listen("x", (v) => got.push(`2:${v}`));
      // Straight on the server, after listen() said the server listens.
      await cluster.primary.query("SELECT pg_notify('x', 'early')");
      await first;
      await cluster.primary.query("SELECT pg_notify('x', 'late')");
      await waitFor(() => got.filter((g) => g.endsWith(":late")).length === 2, {
        message: "both subscribers' late deliveries",
      });
      assert.deepEqual(got.sort(), ["1:early", "1:late", "2:early", "2:late"]);
      await second.unlisten();
    } finally {
      proxy.delayMs = 0;
      await proxy.close();
    }
  });

  it("a subscription made while a re-subscription is in flight shares its outcome", async () => {
    const proxy = await startProxy(cluster.primary);
    try {
      await using p = pool("l11", {
        db: [{ ...viaProxy(proxy), connect_timeout: 2 }],
        health_check_interval_ms: 0,
        listen_heartbeat_ms: 300,
        probe_timeout_ms: 500,
      });
      const events: string[] = [];
      p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
      p.addEventListener("listenrestored", () => events.push("restored"));
      const got: string[] = [];
      await p.listen("r", (x) => got.push(x));
      proxy.mode = "blackhole";
      await waitFor(() => events.length > 0, { message: "listenlost" });
      // The re-subscription goes through the partition: nothing can listen.
      const during = await settleWithin(p.listen("r", () => {}), 8_000);
      assert.ok(during.state === "rejected", `listen() ${during.state} while nothing listens`);
      assert.ok(during.error instanceof NoEndpointAvailableError, `${during.error}`);
      proxy.mode = "pass";
      await waitFor(() => events.includes("restored"), {
        timeoutMs: 15_000,
        message: "listenrestored once the partition heals",
      });
      await cluster.primary.query("SELECT pg_notify('r', 'healed')");
      await waitFor(() => got.includes("healed"), { message: "delivery to the first subscriber" });
    } finally {
      proxy.mode = "pass";
      await proxy.close();
    }
  });

  it("close() during a re-subscription leaves no retry timer armed", async () => {
    const proxy = await startProxy(cluster.primary);
    const realSet = globalThis.setTimeout;
    const realClear = globalThis.clearTimeout;
    try {
      const p = pool("l12", { db: [viaProxy(proxy)] });
      await p.listen("t", () => {});
      const cut = stallListen(proxy, "t");
      await cluster.primary.query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'l12/listen'",
      );
      await waitFor(() => cut.hit, { message: "the re-subscription's LISTEN in flight" });
      // Every timer the listener itself arms from here on, unless cleared (one that fires counts:
      // a retry after close() is the defect even when it finds nothing to do).
      const armed = new Map<unknown, string>();
      const patched = (fn: (...a: unknown[]) => void, ms?: number, ...rest: unknown[]) => {
        const id = realSet(fn, ms, ...rest);
        const caller = (new Error().stack ?? "").split("\n").slice(1)
          .find((frame) => !frame.includes("listen_test.ts")) ?? "";
        if (caller.includes("listener.ts")) armed.set(id, `${ms} ms at ${caller.trim()}`);
        return id;
      };
      globalThis.setTimeout = patched as typeof setTimeout;
      globalThis.clearTimeout = ((id: Parameters<typeof clearTimeout>[0]) => {
        armed.delete(id);
        realClear(id);
      }) as typeof clearTimeout;
      await p.close();
      // The failed LISTEN's handlers run after close() has returned (microtasks, socket close
      // callbacks): by the time the proxy has seen every client close, they have had their turn.
      await waitFor(() => proxy.connections === 0, { message: "every session closed" });
      await new Promise((r) => realSet(r, 20));
      assert.deepEqual([...armed.values()], [], "a listener timer armed after close()");
    } finally {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
      proxy.cutClientChunk = undefined;
      await proxy.close();
    }
  });

  it("follows a failover to the new primary; close() leaves no session", async () => {
    const p = pool("l4", { health_check_interval_ms: 100 });
    try {
      const events: string[] = [];
      p.addEventListener("listenlost", () => events.push("lost"));
      p.addEventListener(
        "listenrestored",
        (e) => events.push(`restored ${e.detail.endpoint.port}`),
      );
      const got: string[] = [];
      await p.listen("failover", (payload) => got.push(payload));
      const [promoted] = cluster.replicas;
      await cluster.primary.stop("fast");
      await promoted.promote();
      await waitFor(() => events.includes(`restored ${promoted.port}`), {
        timeoutMs: 15_000,
        message: "LISTEN restored on the promoted server",
      });
      assert.equal(events[0], "lost");
      await p.query("write", "SELECT pg_notify('failover', 'on the new primary')");
      await waitFor(() => got.includes("on the new primary"), {
        message: "delivery from the new primary",
      });
    } finally {
      await p.close();
    }
    assert.equal(
      (await listenSessions(cluster, "l4")).length,
      0,
      "close() ends the LISTEN session",
    );
    await assert.rejects(p.listen("late", () => {}), { name: "PoolClosedError" });
  });
});

describe("pool.listen with the old primary still up", () => {
  // Its own primary and replica: the replica is promoted while the primary keeps running (two
  // primaries, as when an orchestrator fences the old one late), which the cluster above cannot
  // be put back from.
  let split: PgCluster;
  before(async () => {
    split = await startCluster({ replicas: 1 });
  }, { timeout: 180_000 });
  after(async () => {
    await split?.close();
  }, { timeout: 60_000 });

  const splitListenSessions = async (app: string) =>
    (await poolSessions(split, app)).filter((s) => s.applicationName === `${app}/listen`);

  it("moves to a replica promoted while the old primary keeps running", async () => {
    await using p = new Pool({
      db: split.endpoints(),
      groups: { write: { connection_count: 1, role: "primary" } },
      application_name: "l5",
      health_check_interval_ms: 100,
    });
    const events: string[] = [];
    p.addEventListener("listenlost", (e) => events.push(`lost ${e.detail.reason}`));
    p.addEventListener("listenrestored", (e) => events.push(`restored ${e.detail.endpoint.port}`));
    const got: string[] = [];
    await p.listen("split", (payload) => got.push(payload));
    const [promoted] = split.replicas;
    assert.deepEqual(
      (await splitListenSessions("l5")).map((s) => s.server.port),
      [split.primary.port],
    );
    await promoted.promote();
    await waitFor(() => events.includes(`restored ${promoted.port}`), {
      timeoutMs: 15_000,
      message: "LISTEN restored on the promoted server",
    });
    assert.deepEqual(events, ["lost no longer the primary", `restored ${promoted.port}`]);
    // The old primary, still running, keeps no LISTEN session of the pool.
    await waitFor(async () => {
      const ports = (await splitListenSessions("l5")).map((s) => s.server.port);
      return ports.length === 1 && ports[0] === promoted.port;
    }, { message: "the LISTEN session only on the promoted server" });
    await promoted.query("SELECT pg_notify('split', 'from the promoted server')");
    await waitFor(() => got.includes("from the promoted server"), {
      message: "delivery from the promoted server",
    });
  });

  it("undoes a subscription whose signal aborts before listen() resolves", async () => {
    await using p = new Pool({
      db: split.endpoints(),
      groups: { write: { connection_count: 1, role: "primary" } },
      application_name: "l6",
    });
    const aborted = new AbortController();
    const got: string[] = [];
    const pending = p.listen("abort_early", (payload) => got.push(payload), {
      signal: aborted.signal,
    });
    aborted.abort(new Error("gave up"));
    await assert.rejects(pending, { message: "gave up" });
    await waitFor(async () => (await splitListenSessions("l6")).length === 0, {
      message: "no LISTEN session left by the aborted subscription",
    });
    // A signal aborted after unlisten() does nothing more; a later subscription works.
    const later = new AbortController();
    const sub = await p.listen("abort_late", (payload) => got.push(payload), {
      signal: later.signal,
    });
    await sub.unlisten();
    later.abort();
    const again = await p.listen("abort_late", (payload) => got.push(payload));
    await p.query("write", "SELECT pg_notify('abort_early', 'x'), pg_notify('abort_late', 'y')");
    await waitFor(() => got.includes("y"), { message: "delivery to the later subscription" });
    assert.deepEqual(got, ["y"]);
    await again.unlisten();
  });
});

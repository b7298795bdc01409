// Defects found by audit 16 (LISTEN, leak detection, abort signals and deadlines, close()
// races) and audit 18 (a checkout's timeout during a ping), each proven against real servers.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { behind, startProxy, type TcpProxy } from "./harness/proxy.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { AcquireTimeoutError, Pool, type PoolConfig, type PoolEventDetailMap } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function pool(app: string, extra: Partial<PoolConfig> = {}): Pool {
  return new Pool({
    db: cluster.endpoints(),
    groups: { g: { connection_count: 1 } },
    application_name: app,
    ...extra,
  });
}

/** The primary's endpoint, reached through `proxy`. */
const viaProxy = (proxy: TcpProxy) => behind(proxy, cluster.endpoints()[0]);

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("pool.listen channel names", () => {
  // Sent as UTF-8, a lone surrogate became U+FFFD: the server listened on another name than the
  // one subscribed, and no notification ever reached the subscription (pg_notify with the name
  // given lands on the same U+FFFD name): listen() resolved and stayed deaf without a word.
  it("refuses a channel with a lone surrogate, and delivers one with a surrogate pair", async () => {
    await using p = pool("a16-surrogate");
    await assert.rejects(
      p.listen("jobs\uD800", () => {}),
      (e: unknown) =>
        e instanceof TypeError && /lone surrogate/.test(e.message) &&
        e.message.includes('"jobs\\ud800"'),
    );
    const got: string[] = [];
    const sub = await p.listen("jobs \u{1F600}", (payload) => got.push(payload));
    await p.query("g", "SELECT pg_notify($1, 'pair')", [sub.channel]);
    await waitFor(() => got.length === 1, { message: "delivery on a channel with a pair" });
    await sub.unlisten();
  });

  // JSON.stringify threw its own "Do not know how to serialize a BigInt" for a BigInt channel,
  // and named a symbol or a function "undefined".
  it("a channel that is no string is named in the TypeError", async () => {
    await using p = pool("a16-badchannel");
    for (
      const [value, shown] of [[10n, "10"], [Symbol("s"), "symbol"], [() => 1, "function"]] as const
    ) {
      await assert.rejects(
        p.listen(value as unknown as string, () => {}),
        (e: unknown) =>
          e instanceof TypeError &&
          e.message === `Channel must be a non-empty string (got ${shown})`,
      );
    }
  });
});

/**
 * A pool whose one connection sat idle past validate_after_ms on a host that then went silent
 * (connect_timeout 3 s): `interrupt(p)` runs a checkout that waits on the connection's ping and
 * checks how it ends. Then the host answers again, the permit must come back once the ping
 * settles, and `afterwards(p)` must get a working checkout.
 */
async function duringSilentPing(
  app: string,
  interrupt: (p: Pool) => Promise<void>,
  afterwards: (p: Pool) => Promise<void>,
  extra: Partial<PoolConfig> = {},
): Promise<void> {
  const proxy = await startProxy(cluster.primary);
  try {
    const p = pool(app, {
      db: [{ ...viaProxy(proxy), connect_timeout: 3 }],
      validate_after_ms: 50,
      ...extra,
    });
    await p.query("g", "SELECT 1");
    await sleep(100);
    proxy.mode = "blackhole";
    await interrupt(p);
    proxy.mode = "pass";
    await waitFor(() => p.stats().groups.g.busy === 0, {
      timeoutMs: 10_000,
      message: "the permit back once the ping settled",
    });
    await afterwards(p);
    await p.close();
  } finally {
    proxy.mode = "pass";
    await proxy.close();
  }
}

/**
 * `start(p, signal)` begins a checkout that waits on a silent host's ping; it is aborted 100 ms
 * later and must reject with the signal's reason at once, the ping still out.
 */
function abortDuringPing(
  app: string,
  start: (p: Pool, signal: AbortSignal) => Promise<unknown>,
  afterwards: (p: Pool) => Promise<void>,
): Promise<void> {
  return duringSilentPing(app, async (p) => {
    const ctl = new AbortController();
    const reason = new Error("client went away");
    const checkout = start(p, ctl.signal);
    await sleep(100);
    const aborted = performance.now();
    ctl.abort(reason);
    await assert.rejects(checkout, (e: unknown) => e === reason);
    const ms = performance.now() - aborted;
    assert.ok(ms < 500, `rejected ${Math.round(ms)} ms after the abort`);
    // The ping is still out on the connection: the checkout holds it until that settles.
    assert.equal(p.stats().groups.g.busy, 1);
  }, afterwards);
}

/**
 * `start(p)` begins a checkout with `timeout_ms: 300` that waits on a silent host's ping: it
 * must reject with AcquireTimeoutError near its deadline, not after the ping's connect_timeout.
 */
function timeoutDuringPing(
  app: string,
  start: (p: Pool) => Promise<unknown>,
  afterwards: (p: Pool) => Promise<void>,
  extra: Partial<PoolConfig> = {},
): Promise<void> {
  return duringSilentPing(
    app,
    async (p) => {
      const started = performance.now();
      await assert.rejects(start(p), (e: unknown) => e instanceof AcquireTimeoutError);
      const ms = performance.now() - started;
      assert.ok(
        ms < 1_500,
        `rejected ${Math.round(ms)} ms after the checkout began (timeout_ms 300)`,
      );
    },
    afterwards,
    extra,
  );
}

describe("pool.acquire while the connection it took is being proven", () => {
  // A connection idle past validate_after_ms is pinged before acquire() resolves. On a host gone
  // silent the ping waits out connect_timeout, and the move that follows waits for routing: the
  // caller's abort was ignored for all of it (4.9 s here, then NoEndpointAvailableError instead
  // of the signal's reason).
  it("rejects with its signal's reason at once; the permit comes back when the ping settles", async () => {
    await abortDuringPing("a16-abortping", (p, signal) => p.acquire("g", { signal }), async (p) => {
      await using db = await p.acquire("g", { timeout_ms: 5_000 });
      assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
    });
  });
});

describe("a checkout's first statement while its connection is being proven", () => {
  // The same wait, through pool.transaction(): its signal ended only a wait for a permit. The
  // first statement waited out the ping of a silent host and the move after it.
  it("pool.transaction rejects with its signal's reason at once; the permit comes back", async () => {
    let ran = 0;
    await abortDuringPing(
      "a16-abortping-tx",
      (p, signal) =>
        p.transaction("g", async (db) => {
          await db.query("SELECT 1");
          ran++;
        }, { signal }),
      async (p) => {
        assert.equal(ran, 0);
        await p.transaction("g", async (db) => {
          assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
        }, { timeout_ms: 5_000 });
      },
    );
  });
});

describe("a checkout's timeout_ms while its connection is being proven", () => {
  // Found by audit 18. acquire() resolves only with a proven connection: one idle past
  // validate_after_ms is pinged first. The ping waited out connect_timeout (3 s here) on a silent
  // host and the move after it waited for routing, the checkout's timeout_ms (300 ms) ignored
  // for all of it: 5 s, then NoEndpointAvailableError.
  it("pool.acquire rejects with AcquireTimeoutError at its deadline", async () => {
    await timeoutDuringPing(
      "a18-ping-acquire",
      (p) => p.acquire("g", { timeout_ms: 300 }),
      async (p) => {
        await using db = await p.acquire("g", { timeout_ms: 5_000 });
        assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
      },
    );
  });

  // The same for a one-shot: pool.query pings a connection idle past validate_after_ms before
  // its statement goes out, and that ping waited out connect_timeout whatever the group's
  // acquire_timeout_ms.
  it("pool.query rejects with AcquireTimeoutError at the group's acquire_timeout_ms", async () => {
    await timeoutDuringPing(
      "a18-ping-oneshot",
      (p) => p.query("g", "SELECT 1"),
      async (p) => {
        assert.equal((await p.query("g", "SELECT 1 AS one"))[0].one, 1);
      },
      { groups: { g: { connection_count: 1, acquire_timeout_ms: 300 } } },
    );
  });

  it("pool.transaction rejects with AcquireTimeoutError at its deadline, its callback never done", async () => {
    let ran = 0;
    await timeoutDuringPing(
      "a18-ping-tx",
      (p) =>
        p.transaction("g", async (db) => {
          await db.query("SELECT 1");
          ran++;
        }, { timeout_ms: 300 }),
      async (p) => {
        assert.equal(ran, 0);
        await p.transaction("g", async (db) => {
          assert.equal((await db.query("SELECT 1 AS one"))[0].one, 1);
        }, { timeout_ms: 5_000 });
      },
    );
  });
});

describe("stats while a one-shot waits for a seat", () => {
  // Found by the property test once it had acquire steps (seed 20261129, its 5th program). The
  // group derived its waiting checkouts as the semaphore's waiters minus one while a one-shot's
  // wait for a permit of seats was registered, and forgot that registration a microtask after
  // the semaphore had settled the wait: stats read right after close() said `waiting: -1`.
  it("never counts fewer than zero waiting, also right after close()", async () => {
    const p = pool("a18-seatwait");
    const held = await p.acquire("g");
    await held.query("SELECT 1");
    const oneShot = p.query("g", "SELECT 1");
    oneShot.catch(() => {});
    await waitFor(() => p.stats().groups.g.waiting === 1, { message: "the one-shot waits" });
    const closing = p.close();
    const stats = p.stats().groups.g;
    assert.equal(stats.waiting, 0, JSON.stringify(stats));
    held.release();
    await closing;
    await assert.rejects(oneShot);
  });
});

describe("a connection URL passed where a group name goes", () => {
  // Found by audit 19 (audit 18 round). Drizzle's and postgres.js's own entry points take a URL,
  // so pool.handler(url) is an easy slip: the group name was quoted as given, and
  // UnconfiguredGroupError's message and its `group` property held the URL's password, as did
  // the handler-option and transaction-option errors that name the group.
  it("is quoted and kept without its password", async () => {
    await using p = pool("a18-urlgroup");
    const url = "postgres://app:hunter2@db.example.com:5432/app";
    const errors: unknown[] = [];
    const attempt = (fn: () => unknown) => {
      try {
        const r = fn();
        if (r instanceof Promise) return r.catch((err) => errors.push(err));
      } catch (err) {
        errors.push(err);
      }
    };
    attempt(() => p.handler(url));
    attempt(() => p.handler(url, { timeout_ms: -1 }));
    attempt(() => p.handler(url, "x" as never));
    await attempt(() => p.acquire(url));
    await attempt(() => p.query(url, "SELECT 1"));
    await attempt(() => p.transaction(url, async () => {}));
    await attempt(() => p.transaction(url, async () => {}, "x" as never));
    assert.equal(errors.length, 7);
    for (const err of errors) {
      const e = err as Error & { group?: unknown };
      assert.doesNotMatch(`${e.message} ${String(e.group)}`, /hunter2/, e.message);
      assert.match(e.message, /db\.example\.com/, "the host still named");
    }
  });
});

describe("leak detection of a checkout that waits", () => {
  // The leak clock started when the handler was made, not when it got its connection: under
  // load every checkout that waited longer than leak_detection_ms for a permit was reported as
  // a leak while it held nothing (and held_ms counted its wait).
  it("counts from the connection, not from the wait: a waiter is no leak", async () => {
    await using p = pool("a16-leakwait", {
      groups: { g: { connection_count: 1, leak_detection_ms: 300 } },
    });
    const leaks: PoolEventDetailMap["leak"][] = [];
    p.addEventListener("leak", (e) => leaks.push(e.detail));
    const holder = await p.acquire("g");
    await holder.query("SELECT 1");
    const waiting = p.acquire("g", { timeout_ms: 5_000 });
    await sleep(800);
    holder.release();
    const waiter = await waiting;
    await waiter.query("SELECT 1");
    waiter.release();
    await sleep(500);
    assert.equal(leaks.length, 1, JSON.stringify(leaks.map((l) => l.held_ms)));
    assert.equal(leaks[0].reclaimed, false);
    assert.ok(leaks[0].held_ms >= 300 && leaks[0].held_ms < 800, `held ${leaks[0].held_ms} ms`);
  });
});

describe("a group that is no string", () => {
  // JSON.stringify named the group: a config object passed where the group name goes (an easy
  // slip: pool.handler(config)) put its password in UnconfiguredGroupError's message, and a
  // BigInt failed with JSON.stringify's own TypeError. Now a TypeError names the type (found by
  // audits 16 and 17 alike; audit17_test checks the same through pool.listen).
  it("is named by its type, never by its contents", async () => {
    await using p = pool("a16-badgroup");
    const secret = { user: "app", pass: "hunter2" } as unknown as string;
    const errors: unknown[] = [];
    try {
      p.handler(secret);
    } catch (err) {
      errors.push(err);
    }
    await p.acquire(secret).catch((err) => errors.push(err));
    await p.query(secret, "SELECT 1").catch((err) => errors.push(err));
    await p.transaction(secret, async () => {}).catch((err) => errors.push(err));
    await p.transaction(secret, async () => {}, "x" as never).catch((err) => errors.push(err));
    assert.equal(errors.length, 5);
    for (const err of errors) {
      const message = (err as Error).message;
      assert.doesNotMatch(message, /hunter2/);
      assert.equal((err as Error).name, "TypeError");
      // The fifth: its options are checked first, and that message names the group too.
      assert.match(
        message,
        /group name must be a string \(got an object\)|options of group an object must be/,
      );
    }
    await assert.rejects(
      p.query(10n as unknown as string, "SELECT 1"),
      { name: "TypeError", message: /group name must be a string \(got 10n?\)/ },
    );
  });
});

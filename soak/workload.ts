// The soak's workload: concurrent workers issuing handlers, transactions, one-shots,
// read-your-writes reads, aborted and short-deadline checkouts and statement timeouts. Every
// write carries a unique request id and its checkout id, and is stamped by the server with the
// session (port, backend pid) that ran it; the ledger records what each outcome implies.
import { AcquireTimeoutError, type Handler, NoEndpointAvailableError, type Pool } from "../mod.ts";
import { checkDeadline, describeError, type Violations } from "./checks.ts";
import { type Classified, classify, isPostgresError, SoakAbort } from "./classify.ts";
import { Expect, type Ledger } from "./ledger.ts";
import { Counters, Latencies, type LoopLag } from "./metrics.ts";
import type { Rng } from "./rng.ts";

/** Operation kinds and their weights in the mix. */
export const OP_WEIGHTS = {
  "oneshot-write": 14,
  "oneshot-read": 12,
  "auto-handler": 10,
  "tx": 12,
  "tx-handler": 14,
  "slow-tx": 6,
  "acquire": 8,
  "abort": 6,
  "short-timeout": 6,
  "stmt-timeout": 3,
  "bad-value": 2,
} as const;

/** One of the operation kinds. */
export type OpKind = keyof typeof OP_WEIGHTS | "ryw-read" | "recovery-probe";

/** Group names the soak's pool defines. */
export type GroupName = "write" | "auto" | "read" | "pread";

/** Per-kind operation figures. */
export interface OpFigures {
  started: number;
  ok: number;
  failed: number;
  hung: number;
}

/** Everything an operation needs. */
export interface WorkloadContext {
  readonly pool: Pool;
  readonly ledger: Ledger;
  readonly violations: Violations;
  readonly lag: LoopLag;
  readonly rng: Rng;
  /** Error counts per label (see classify.ts). */
  readonly errors: Counters;
  /** Latency of successful operations per kind. */
  readonly latency: Latencies;
  readonly ops: Map<string, OpFigures>;
  /** The groups' acquire_timeout_ms. */
  readonly acquireTimeoutMs: Readonly<Record<GroupName, number>>;
  /** An operation that has not settled after this long is a hang (violation). */
  readonly opDeadlineMs: number;
  /** Read-your-writes checks done, by token source. */
  readonly ryw: Counters;
}

/** Creates the figures containers of a context. */
export function newFigures(): Pick<WorkloadContext, "errors" | "latency" | "ops" | "ryw"> {
  return { errors: new Counters(), latency: new Latencies(), ops: new Map(), ryw: new Counters() };
}

const INSERT =
  "INSERT INTO soak_writes (req, checkout, pid, port, kind) VALUES ($1, $2, pg_backend_pid(), inet_server_port(), $3)";

const RYW_SELECT = `SELECT count(DISTINCT req)::int AS n, inet_server_port() AS port,
  pg_is_in_recovery() AS standby,
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text || ' (received ' ||
     coalesce(pg_last_wal_receive_lsn()::text, '-') || ', paused ' || pg_is_wal_replay_paused() || ')'
   ELSE pg_current_wal_lsn()::text END) AS lsn
  FROM soak_writes WHERE req = ANY (string_to_array($1, ',')::int[])`;

const noop = () => {};

function figures(ctx: WorkloadContext, kind: string): OpFigures {
  let f = ctx.ops.get(kind);
  if (f === undefined) ctx.ops.set(kind, f = { started: 0, ok: 0, failed: 0, hung: 0 });
  return f;
}

/** Counts and classifies a rejection; an error that breaks the contract is a violation. */
function failed(ctx: WorkloadContext, kind: string, err: unknown): Classified {
  const c = classify(err);
  ctx.errors.add(c.label);
  if (c.unexpected) ctx.violations.add("unexpected-error", `${kind}: ${c.unexpected}`);
  return c;
}

/** Marks writes after a rejection: absent when it proves nothing ran, else unknown. */
function settleFailed(ctx: WorkloadContext, reqs: readonly number[], c: Classified): void {
  ctx.ledger.set(reqs, c.expect === "absent" ? Expect.Absent : Expect.Unknown, c.label);
}

/**
 * Runs one operation under the hang deadline; records its latency when it succeeded. An
 * operation that has not settled by the deadline is reported and abandoned (its rejection, if
 * it ever comes, is swallowed).
 */
export async function runOp(
  ctx: WorkloadContext,
  kind: OpKind,
  fn: () => Promise<boolean>,
): Promise<void> {
  const f = figures(ctx, kind);
  f.started++;
  const started = performance.now();
  let timer: ReturnType<typeof setTimeout> | undefined;
  const p = fn();
  p.catch(noop);
  const hung = new Promise<"hung">((resolve) => {
    timer = setTimeout(() => resolve("hung"), ctx.opDeadlineMs);
  });
  try {
    const result = await Promise.race([p, hung]);
    if (result === "hung") {
      f.hung++;
      ctx.violations.add(
        "hang",
        `${kind} did not settle within ${ctx.opDeadlineMs} ms; pool now: ${poolState(ctx.pool)}`,
      );
    } else if (result) {
      f.ok++;
      ctx.latency.record(kind, performance.now() - started);
    } else {
      f.failed++;
    }
  } catch (err) {
    f.failed++;
    // Operations catch statement errors themselves; what gets here was thrown synchronously
    // (e.g. by pool.handler()) or is a bug of the soak. Writes it left pending count as unknown.
    const c = classify(err);
    if (c.unexpected) ctx.violations.add("soak-internal-error", `${kind}: ${describeError(err)}`);
    else ctx.errors.add(`${c.label} (thrown by checkout)`);
  } finally {
    clearTimeout(timer);
  }
}

/** A one-line summary of pool.stats(): groups (busy/idle/waiting) and endpoints (role, state). */
export function poolState(pool: Pool): string {
  const st = pool.stats();
  const groups = Object.entries(st.groups).map(([name, g]) =>
    `${name} ${g.busy}/${g.idle}/${g.waiting}`
  );
  const endpoints = st.endpoints.map((e) => `:${e.port} ${e.role} ${e.state}`);
  return `groups busy/idle/waiting ${groups.join(", ")}; endpoints ${endpoints.join(", ")}`;
}

function write(db: Handler, req: number, checkout: number, kind: string): Promise<unknown> {
  return db.query(INSERT, [req, checkout, kind]);
}

/** Sometimes a short timeout_ms for a handler's checkout (no deadline check: see acquire). */
function shortTimeout(ctx: WorkloadContext): { timeout_ms: number } | undefined {
  return ctx.rng.chance(0.15) ? { timeout_ms: ctx.rng.int(5, 50) } : undefined;
}

const readGroup = (ctx: WorkloadContext): GroupName => ctx.rng.chance(0.7) ? "read" : "pread";

/** pool.query on the autocommit group: one write, its own checkout. */
async function oneshotWrite(ctx: WorkloadContext): Promise<boolean> {
  const req = ctx.ledger.request("oneshot-write");
  const checkout = ctx.ledger.checkout();
  try {
    await ctx.pool.query("auto", INSERT, [req, checkout, "oneshot-write"]);
    ctx.ledger.set([req], Expect.Present);
    return true;
  } catch (err) {
    settleFailed(ctx, [req], failed(ctx, "oneshot-write", err));
    return false;
  }
}

/** pool.query on a read group. */
async function oneshotRead(ctx: WorkloadContext): Promise<boolean> {
  const probe = Math.max(1, ctx.ledger.lastRequest - ctx.rng.int(0, 50));
  try {
    await ctx.pool.query(
      readGroup(ctx),
      "SELECT count(*)::int AS n FROM soak_writes WHERE req = $1",
      [
        probe,
      ],
    );
    return true;
  } catch (err) {
    failed(ctx, "oneshot-read", err);
    return false;
  }
}

/**
 * A handler on the autocommit group: a session tag (SET), 1-3 writes each committing by
 * itself, then the tag read back. The tag must still be there: a checkout never moves to another
 * session silently.
 */
async function autoHandler(ctx: WorkloadContext): Promise<boolean> {
  const checkout = ctx.ledger.checkout();
  const tag = String(checkout);
  let ok = true;
  let tagged = false;
  await using db = ctx.pool.handler("auto", shortTimeout(ctx));
  try {
    await db.query(`SET soak.tag = '${tag}'`);
    tagged = true;
  } catch (err) {
    failed(ctx, "auto-handler", err);
    ok = false;
  }
  const n = ctx.rng.int(1, 3);
  for (let i = 0; i < n; i++) {
    const req = ctx.ledger.request("auto-handler");
    try {
      await write(db, req, checkout, "auto-handler");
      ctx.ledger.set([req], Expect.Present);
    } catch (err) {
      settleFailed(ctx, [req], failed(ctx, "auto-handler", err));
      ok = false;
    }
  }
  try {
    const [row] = await db.query(
      "SELECT current_setting('soak.tag', true) AS tag, pg_backend_pid() AS pid",
    );
    if (tagged && row.tag !== tag) {
      ctx.violations.add(
        "session-state-lost",
        `auto-handler checkout ${checkout}: SET soak.tag = '${tag}' succeeded, later statement of the ` +
          `same handler saw ${JSON.stringify(row.tag)} (pid ${row.pid} on ${db.endpoint?.port})`,
      );
    }
  } catch (err) {
    failed(ctx, "auto-handler", err);
    ok = false;
  }
  return ok;
}

/** Checks a read-your-writes read: the handler `after` the token must see `reqs`. */
async function rywRead(
  ctx: WorkloadContext,
  token: string,
  source: "commit" | "pool.token",
  reqs: readonly number[],
): Promise<void> {
  await runOp(ctx, "ryw-read", async () => {
    const group = readGroup(ctx);
    const started = performance.now();
    try {
      await using db = ctx.pool.handler(group, { after: token });
      const [row] = await db.query(RYW_SELECT, [reqs.join(",")]);
      ctx.ryw.add(source);
      if (row.n !== reqs.length) {
        // Ask again on the same session: tells "routed before the replica replayed the token"
        // (seen now) from "replayed but not visible" (still missing).
        const again = await db.query(RYW_SELECT, [reqs.join(",")]).then(
          ([r]) => `${r.n} at ${r.lsn}`,
          (err) => `failed: ${describeError(err)}`,
        );
        ctx.violations.add(
          "read-your-writes",
          `group ${group}, token ${token} (${source}) for reqs ${
            reqs.join(",")
          }: saw ${row.n} of ` +
            `${reqs.length} on port ${row.port} (${row.standby ? "standby" : "primary"}, ` +
            `replayed ${row.lsn} after the scan; same query again: ${again}; ` +
            `${Math.round(performance.now() - started)} ms after checkout began)`,
        );
      }
      return true;
    } catch (err) {
      failed(ctx, "ryw-read", err);
      return false;
    }
  });
}

/** After a commit: sometimes check read-your-writes with its token or with pool.token. */
async function maybeRyw(
  ctx: WorkloadContext,
  token: string | undefined,
  reqs: readonly number[],
  p: number,
): Promise<void> {
  if (!ctx.rng.chance(p)) return;
  const usePool = token === undefined || ctx.rng.chance(0.3);
  // pool.token is the newest token this pool committed: at or past this commit's.
  const t = usePool ? ctx.pool.token : token;
  if (t === undefined) {
    ctx.ryw.add("no-token");
    return;
  }
  await rywRead(ctx, t, usePool ? "pool.token" : "commit", reqs);
}

/**
 * pool.transaction on the write group with 1-3 writes (or, for slow-tx, a pg_sleep between two
 * writes so terminations hit statements in flight). A rejection before fn finished proves
 * nothing committed; a rejection of the COMMIT is classified.
 */
async function transaction(ctx: WorkloadContext, kind: "tx" | "slow-tx"): Promise<boolean> {
  const checkout = ctx.ledger.checkout();
  const reqs: number[] = [];
  let fnDone = false;
  try {
    await ctx.pool.transaction("write", async (db) => {
      const n = kind === "slow-tx" ? 2 : ctx.rng.int(1, 3);
      for (let i = 0; i < n; i++) {
        const req = ctx.ledger.request(kind);
        reqs.push(req);
        await write(db, req, checkout, kind);
        if (kind === "slow-tx" && i === 0) {
          await db.query(`SELECT pg_sleep(${(ctx.rng.int(50, 250) / 1000).toFixed(3)})`);
        }
      }
      fnDone = true;
    });
  } catch (err) {
    const c = failed(ctx, kind, err);
    if (!fnDone) ctx.ledger.set(reqs, Expect.Absent, `${c.label} before COMMIT`);
    else settleFailed(ctx, reqs, c);
    return false;
  }
  ctx.ledger.set(reqs, Expect.Present);
  await maybeRyw(ctx, undefined, reqs, 0.4);
  return true;
}

/**
 * A handler on the write group committing explicitly, sometimes twice in one checkout; each
 * commit's token is checked with a read-your-writes read.
 */
async function txHandler(ctx: WorkloadContext): Promise<boolean> {
  const checkout = ctx.ledger.checkout();
  const rounds = ctx.rng.chance(0.3) ? 2 : 1;
  using db = ctx.pool.handler("write", shortTimeout(ctx));
  for (let round = 0; round < rounds; round++) {
    const reqs: number[] = [];
    const n = ctx.rng.int(1, 3);
    try {
      for (let i = 0; i < n; i++) {
        const req = ctx.ledger.request("tx-handler");
        reqs.push(req);
        await write(db, req, checkout, "tx-handler");
      }
    } catch (err) {
      // Never committed: disposing the handler rolls the transaction back.
      const c = failed(ctx, "tx-handler", err);
      ctx.ledger.set(reqs, Expect.Absent, `${c.label} before COMMIT`);
      return false;
    }
    let token: string | undefined;
    try {
      token = await db.commit();
    } catch (err) {
      settleFailed(ctx, reqs, failed(ctx, "tx-handler", err));
      return false;
    }
    ctx.ledger.set(reqs, Expect.Present);
    if (token === undefined) ctx.ryw.add("commit without token");
    await maybeRyw(ctx, token, reqs, 0.6);
  }
  return true;
}

/**
 * pool.acquire (a checkout that resolves once validated) on a random group, with the group's
 * deadline or a short timeout_ms; its rejections are checked against that deadline.
 */
async function acquire(ctx: WorkloadContext, kind: "acquire" | "short-timeout"): Promise<boolean> {
  const group = ctx.rng.pick<GroupName>(["write", "auto", "read", "pread"]);
  const timeout = kind === "short-timeout" ? ctx.rng.int(1, 30) : undefined;
  const deadline = timeout ?? ctx.acquireTimeoutMs[group];
  const started = performance.now();
  let db: Handler;
  try {
    db = await ctx.pool.acquire(group, timeout === undefined ? undefined : { timeout_ms: timeout });
  } catch (err) {
    const c = failed(ctx, kind, err);
    if (err instanceof AcquireTimeoutError || err instanceof NoEndpointAvailableError) {
      const g = ctx.pool.stats().groups[group];
      const state = `${c.label}${
        err instanceof AcquireTimeoutError ? ` (timeoutMs ${err.timeoutMs})` : ""
      }; group ${group} now: busy ${g?.busy}, idle ${g?.idle}, waiting ${g?.waiting}`;
      checkDeadline(ctx.violations, ctx.lag, `${kind} on ${group}: ${state}`, started, deadline);
    }
    return false;
  }
  await using _ = db;
  return await useCheckout(ctx, kind, db, group);
}

/** One write (and commit) on a checked-out handler of a write group, or one read. */
async function useCheckout(
  ctx: WorkloadContext,
  kind: string,
  db: Handler,
  group: GroupName,
): Promise<boolean> {
  if (group === "read" || group === "pread") {
    try {
      await db.query("SELECT 1");
      return true;
    } catch (err) {
      failed(ctx, kind, err);
      return false;
    }
  }
  const checkout = ctx.ledger.checkout();
  const req = ctx.ledger.request(kind);
  try {
    await write(db, req, checkout, kind);
  } catch (err) {
    const c = failed(ctx, kind, err);
    // In the write group nothing committed yet; in auto the statement itself is the commit.
    if (group === "write") ctx.ledger.set([req], Expect.Absent, `${c.label} before COMMIT`);
    else settleFailed(ctx, [req], c);
    return false;
  }
  if (group === "auto") {
    ctx.ledger.set([req], Expect.Present);
    return true;
  }
  try {
    await db.commit();
  } catch (err) {
    settleFailed(ctx, [req], failed(ctx, kind, err));
    return false;
  }
  ctx.ledger.set([req], Expect.Present);
  return true;
}

/**
 * A checkout with an AbortSignal aborted before, right after, or a few ms after it starts. An
 * abort rejects only a waiting checkout (with the signal's reason, promptly).
 */
async function aborted(ctx: WorkloadContext): Promise<boolean> {
  const group = ctx.rng.pick<GroupName>(["write", "auto", "read"]);
  const ac = new AbortController();
  const mode = ctx.rng.int(0, 2);
  let abortedAt = Infinity;
  const abort = () => {
    abortedAt = performance.now();
    ac.abort(new SoakAbort());
  };
  let timer: ReturnType<typeof setTimeout> | undefined;
  if (mode === 0) abort();
  else if (mode === 1) queueMicrotask(abort);
  else timer = setTimeout(abort, ctx.rng.int(0, 5));
  let db: Handler;
  try {
    db = await ctx.pool.acquire(group, { signal: ac.signal });
  } catch (err) {
    failed(ctx, "abort", err);
    if (err instanceof SoakAbort) {
      checkDeadline(
        ctx.violations,
        ctx.lag,
        `abort on ${group}`,
        Math.min(abortedAt, performance.now()),
        0,
      );
    }
    return false;
  } finally {
    clearTimeout(timer);
  }
  await using _ = db;
  return await useCheckout(ctx, "abort", db, group);
}

/**
 * statement_timeout: in the write group a SET LOCAL inside the transaction, in the autocommit
 * group a session SET (RESET afterwards). A long statement after it must be cancelled (57014);
 * completing instead means the SET was lost, i.e. the statements ran on different sessions.
 */
export async function statementTimeout(ctx: WorkloadContext): Promise<boolean> {
  const checkout = ctx.ledger.checkout();
  if (ctx.rng.chance(0.5)) {
    const req = ctx.ledger.request("stmt-timeout");
    let set = false;
    let slept = false;
    try {
      await ctx.pool.transaction("write", async (db) => {
        await db.query("SET LOCAL statement_timeout = '50ms'");
        set = true;
        await write(db, req, checkout, "stmt-timeout");
        await db.query("SELECT pg_sleep(0.3)");
        slept = true;
      });
    } catch (err) {
      const c = failed(ctx, "stmt-timeout", err);
      // The transaction never reached COMMIT unless fn finished (it cannot, see below).
      ctx.ledger.set(
        [req],
        slept ? (c.expect === "absent" ? Expect.Absent : Expect.Unknown) : Expect.Absent,
        c.label,
      );
      return isPostgresError(err) && err.code === "57014";
    }
    ctx.ledger.set([req], Expect.Present);
    if (set && slept) {
      ctx.violations.add(
        "session-state-lost",
        `stmt-timeout checkout ${checkout}: SET LOCAL statement_timeout = 50ms, then pg_sleep(0.3) in ` +
          `the same transaction completed`,
      );
    }
    return false;
  }
  await using db = ctx.pool.handler("auto");
  let set = false;
  let ok = false;
  try {
    await db.query("SET statement_timeout = '50ms'");
    set = true;
    const started = performance.now();
    await db.query("SELECT pg_sleep(0.3)");
    ctx.violations.add(
      "session-state-lost",
      `stmt-timeout checkout ${checkout}: SET statement_timeout = 50ms, then pg_sleep(0.3) on the ` +
        `same handler completed after ${Math.round(performance.now() - started)} ms`,
    );
  } catch (err) {
    failed(ctx, "stmt-timeout", err);
    ok = set && isPostgresError(err) && err.code === "57014";
  } finally {
    if (set) {
      await db.query("RESET statement_timeout").catch((err) => failed(ctx, "stmt-timeout", err));
    }
  }
  const req = ctx.ledger.request("stmt-timeout");
  try {
    await write(db, req, checkout, "stmt-timeout");
    ctx.ledger.set([req], Expect.Present);
  } catch (err) {
    settleFailed(ctx, [req], failed(ctx, "stmt-timeout", err));
    ok = false;
  }
  return ok;
}

/**
 * A one-shot with a value that cannot be sent, pipelined among the others: `undefined` (refused
 * before anything is sent) or "infinity" for a timestamptz (postgres.js cannot encode it; the
 * server refuses it for that statement alone; Bun's `SQL` sends NULL). Its own error or a
 * fault's are fine; another statement's answer (rows, or a server ERROR) is a violation, and
 * the writes around it are checked by the ledger as ever.
 */
async function badValue(ctx: WorkloadContext): Promise<boolean> {
  const undef = ctx.rng.chance(0.5);
  const group: GroupName = ctx.rng.chance(0.5) ? "auto" : readGroup(ctx);
  try {
    const rows = undef
      ? await ctx.pool.query(group, "SELECT $1::text AS t", [undefined as unknown as string])
      : await ctx.pool.query(group, "SELECT $1::timestamptz AS t", ["infinity"]);
    if (undef || rows.length !== 1 || Object.keys(rows[0]).join() !== "t") {
      ctx.violations.add("misrouted", `bad-value on ${group} resolved to ${JSON.stringify(rows)}`);
    }
    return true;
  } catch (err) {
    const own = undef
      ? err instanceof TypeError && /\$1 is undefined/.test(err.message)
      : err instanceof RangeError && /\$1 cannot be sent/.test(err.message);
    if (own) return true;
    if (isPostgresError(err) && (err as { severity?: unknown }).severity === "ERROR") {
      ctx.violations.add("misrouted", `bad-value on ${group} got ${describeError(err)}`);
    }
    failed(ctx, "bad-value", err);
    return false;
  }
}

/** Runs one operation of `kind`. */
export function runKind(ctx: WorkloadContext, kind: keyof typeof OP_WEIGHTS): Promise<void> {
  switch (kind) {
    case "oneshot-write":
      return runOp(ctx, kind, () => oneshotWrite(ctx));
    case "oneshot-read":
      return runOp(ctx, kind, () => oneshotRead(ctx));
    case "auto-handler":
      return runOp(ctx, kind, () => autoHandler(ctx));
    case "tx":
    case "slow-tx":
      return runOp(ctx, kind, () => transaction(ctx, kind));
    case "tx-handler":
      return runOp(ctx, kind, () => txHandler(ctx));
    case "acquire":
    case "short-timeout":
      return runOp(ctx, kind, () => acquire(ctx, kind));
    case "abort":
      return runOp(ctx, kind, () => aborted(ctx));
    case "stmt-timeout":
      return runOp(ctx, kind, () => statementTimeout(ctx));
    case "bad-value":
      return runOp(ctx, kind, () => badValue(ctx));
  }
}

/** One worker: random operations with a short random pause between them until `stop()` says so. */
export async function worker(
  ctx: WorkloadContext,
  stop: () => boolean,
  thinkMs: number,
): Promise<void> {
  while (!stop()) {
    await runKind(ctx, ctx.rng.weighted(OP_WEIGHTS));
    await new Promise((resolve) => setTimeout(resolve, ctx.rng.int(0, thinkMs)));
  }
}

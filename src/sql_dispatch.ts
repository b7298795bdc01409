/**
 * Follows a statement made through `db.sql` from its dispatch to its end, whichever way it is
 * dispatched: its first `then` (which `await`, `catch` and `finally` go through), `execute()`,
 * postgres.js's `forEach()` and `cursor()`, Bun's `run()`. A checkout counts such a statement in
 * flight meanwhile, so that its release keeps the connection until the statement has settled;
 * counted from its first `then` only, one started with `execute()` or `forEach()` went back to
 * the group still running, and the next checkout got the connection mid-statement.
 *
 * A cursor read through its async iterator is driven by its reader: between two batches the
 * statement waits for the reader's next `next()`, holding the connection (postgres.js sends
 * nothing else on it meanwhile). Such a cursor still open when its checkout is released is
 * closed (as a `for await` left by `break` closes it) rather than waited for, which would hold
 * the connection for as long as the reader pleased (forever for one that stopped reading); the
 * release then waits for the close, and the reader's next `next()` rejects with the checkout's
 * use-after-release error: the rows it read stay true, the rest is not read.
 *
 * @module
 */

/** Tells whoever follows a statement how it ended (`undefined`: it succeeded). */
export type Done = (error: unknown) => void;

/** What following the cursors of one checkout needs (postgres.js only: Bun's SQL has none). */
export interface CursorBook {
  /** The cursors being read: each entry closes its own (see the module doc). */
  readonly open: Set<() => void>;
  /** What a cursor's callback returns to close the portal (postgres.js's `sql.CLOSE`). */
  readonly close: unknown;
  /** The error the reader of a cursor closed by its checkout's release gets. */
  released(): Error;
}

/** The methods that send a statement made through `sql` (the ones a driver has). */
const DISPATCHING = ["then", "execute", "forEach", "run"] as const;

type Method = (this: Promise<unknown>, ...args: unknown[]) => unknown;

/**
 * Calls `start` on the dispatch of `statement` (never earlier: a fragment embedded in another
 * statement is never sent on its own), and what it returns once the statement settles. Nothing
 * is sent here. With `cursors`, a cursor read through its async iterator is read through
 * postgres.js's callback form instead, whose statement settles when the cursor ends (the
 * iterator form never settles it) and can be closed at release.
 */
export function followStatement(
  statement: Promise<unknown>,
  start: () => Done,
  cursors: CursorBook | undefined,
): void {
  const methods = statement as unknown as Record<string, unknown>;
  const then = statement.then as Method;
  let done: Done | undefined;
  const dispatch = (self: Promise<unknown>): void => {
    if (done !== undefined) return;
    const end = done = start();
    then.call(self, () => end(undefined), end);
  };
  for (const name of DISPATCHING) {
    const method = methods[name];
    if (typeof method !== "function") continue;
    methods[name] = function (this: Promise<unknown>, ...args: unknown[]) {
      dispatch(this);
      return (method as Method).apply(this, args);
    };
  }
  const cursor = methods.cursor;
  if (cursors === undefined || typeof cursor !== "function") return;
  methods.cursor = function (this: Promise<unknown>, ...args: unknown[]) {
    // The callback form is a statement like any: it settles when the cursor ends.
    if (args.some((arg) => typeof arg === "function")) return (cursor as Method).apply(this, args);
    const rows = typeof args[0] === "number" ? args[0] : 1;
    let reader: AsyncIterator<unknown> | undefined;
    return {
      [Symbol.asyncIterator]: () => reader ??= read(this, cursor as Method, rows, cursors),
    };
  };
}

/** A cursor's async iterator over postgres.js's callback form (see `followStatement`). */
function read(
  statement: Promise<unknown>,
  cursor: Method,
  rows: number,
  cursors: CursorBook,
): AsyncIterator<unknown> {
  let started = false;
  let ended = false;
  /** The reader asked to close (`return()`), or the checkout was released (`cut`). */
  let closing = false;
  let cut = false;
  let failure: { error: unknown } | undefined;
  /** The reader's `next()` waiting for a batch. */
  let waiting:
    | { resolve: (result: IteratorResult<unknown>) => void; reject: (err: unknown) => void }
    | undefined;
  /** The statement waiting for the reader (postgres.js awaits the callback's promise). */
  let resume: ((value?: unknown) => void) | undefined;
  const finished = (): IteratorResult<unknown> => ({ value: undefined, done: true });
  const close = (): void => {
    closing = true;
    const go = resume;
    resume = undefined;
    go?.(cursors.close);
  };
  const release = (): void => {
    if (ended || cut) return;
    cut = true;
    close();
  };
  // The last batch comes with the statement's completion, which does not wait for its promise.
  const batch = (value: unknown): unknown => {
    const reader = waiting;
    waiting = undefined;
    if (closing) {
      if (cut) reader?.reject(cursors.released());
      else reader?.resolve(finished());
      return cursors.close;
    }
    reader?.resolve({ value, done: false });
    return new Promise((go) => resume = go);
  };
  const end = (error: { error: unknown } | undefined): void => {
    ended = true;
    cursors.open.delete(release);
    const reader = waiting;
    waiting = undefined;
    if (cut) reader?.reject(cursors.released());
    else if (error === undefined || closing) reader?.resolve(finished());
    else if (reader !== undefined) reader.reject(error.error);
    else failure = error;
  };
  return {
    next(): Promise<IteratorResult<unknown>> {
      if (cut) return Promise.reject(cursors.released());
      if (failure !== undefined) {
        const { error } = failure;
        failure = undefined;
        return Promise.reject(error);
      }
      if (ended) return Promise.resolve(finished());
      return new Promise((resolve, reject) => {
        waiting = { resolve, reject };
        if (started) {
          const go = resume;
          resume = undefined;
          go?.();
          return;
        }
        started = true;
        cursors.open.add(release);
        cursor.call(statement, rows, batch);
        // Dispatched through its then: followed in flight like any statement.
        statement.then(() => end(undefined), (error: unknown) => end({ error }));
      });
    },
    return(): Promise<IteratorResult<unknown>> {
      if (started && !ended) close();
      else ended = true;
      return Promise.resolve(finished());
    },
  };
}

/**
 * Which statements leave state on their session after their transaction: settings (`SET`,
 * `set_config(..., false)`, `SET ROLE`), temporary tables, session advisory locks, `LISTEN`,
 * cursors `WITH HOLD`, prepared statements. A pooled connection goes to another checkout next,
 * which must not run on a schema, a role or a lock someone else left behind, so such a checkout
 * is cleaned at check-in. Read from the command tag where the pool sees one and from the text
 * otherwise: a function that sets something on its own is not seen (README: session state).
 *
 * @module
 */

/** What a statement left on its session. */
export type Residue = 0 | 1 | 2;
/** Nothing that outlives its transaction. */
export const CLEAN: Residue = 0;
/** State that `RESET_SESSION` clears. */
export const RESETTABLE: Residue = 1;
/**
 * State only a new session clears: a prepared statement of the caller's (`DEALLOCATE ALL` would
 * also drop the driver's own), a loaded library, and the drivers' own prepared statements
 * dropped by the caller (`DEALLOCATE`, `DISCARD ALL`).
 */
export const UNRESETTABLE: Residue = 2;

/**
 * Everything `DISCARD ALL` clears but the prepared statements, which the drivers cache per
 * connection. A text of several statements: the simple protocol, one round trip.
 */
export const RESET_SESSION =
  "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; " +
  "SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES";

// Temporary objects: made by a CREATE naming TEMP, TEMPORARY or a pg_temp schema (pg_temp.t,
// pg_temp_3.t) or by SELECT ... INTO TEMP. A column or table merely named temp (sensor readings)
// makes nothing: matched alone, it cost every such statement a reset.
const TEMP_WORD = String.raw`\b(?:temp|temporary|pg_temp(?:_\d+)?)\b`;
const MAKES_TEMP = String.raw`\bcreate\b[^;]*?${TEMP_WORD}|\binto\s+${TEMP_WORD}`;
// Calls and words that leave state whatever the command: set_config, session advisory locks
// (not the _xact_ ones), temporary objects.
const CALLS = new RegExp(String.raw`set_config|advisory_lock|${MAKES_TEMP}`, "i");
const LOCKS_OR_TEMP = new RegExp(String.raw`advisory_lock|${MAKES_TEMP}`, "i");
// set_config(name, value, true) with a literal `true` ends with its transaction (the
// row-level-security pattern: one per request, which should not cost a reset each).
const SET_CONFIG = /set_config/gi;
// A name or value may be cast ($1::text: a number given for the value).
const ARGUMENT = String.raw`(?:'[^']*'|\$\d+)(?:\s*::\s*\w+)?`;
const LOCAL_SET_CONFIG = new RegExp(
  String.raw`set_config\s*\(\s*${ARGUMENT}\s*,\s*${ARGUMENT}\s*,\s*true\s*\)`,
  "gi",
);
// A cursor kept past its transaction.
const HOLD = /\bwith\s+hold\b/i;
// Bodies that may run SET or RESET themselves.
const BODY = /\b(?:set|reset)\s/i;
// SET that ends with its transaction.
const TRANSACTION_SET = /^\s*set\s+(?:local|transaction|constraints)\b/i;
// Leading words of statements in a text whose commands the pool does not see, past blanks and
// comments (the server skips them: a query tag before a SET leaves it a SET; nested block
// comments are not followed): of each statement in a text of several, of the first alone
// otherwise (anchored, so a long text of one statement is not scanned for them: a bulk INSERT of
// 100 kB took 0.2 ms).
const GAP = String.raw`(?:\s|--[^\n]*(?:\n|$)|/\*[\s\S]*?\*/)*`;
const UNRESETTABLE_WORDS = String.raw`${GAP}(?:prepare|load|deallocate|discard\s+all)\b`;
const RESETTABLE_WORDS = String
  .raw`${GAP}(?:set(?!\s+(?:local|transaction|constraints)\b)|reset|listen|declare|do|call)\b`;
const LEADS_UNRESETTABLE = new RegExp(String.raw`(?:^|;)${UNRESETTABLE_WORDS}`, "i");
const LEADS_RESETTABLE = new RegExp(String.raw`(?:^|;)${RESETTABLE_WORDS}`, "i");
const FIRST_UNRESETTABLE = new RegExp(String.raw`^${UNRESETTABLE_WORDS}`, "i");
const FIRST_RESETTABLE = new RegExp(String.raw`^${RESETTABLE_WORDS}`, "i");

/**
 * What `text`, answered with command tag `command`, left on its session.
 *
 * @example Reading a statement's residue
 * ```ts
 * import { residueOf, RESETTABLE } from "./session_state.ts";
 *
 * residueOf("SET", "SET search_path TO tenant_a") === RESETTABLE; // true
 * residueOf("SELECT", "SELECT 1"); // 0 (CLEAN)
 * ```
 */
export function residueOf(command: string, text: string): Residue {
  const tagged = residueOfCommand(command, text);
  if (tagged !== undefined) return tagged;
  let residue = known.get(text);
  if (residue === undefined) {
    // A text of several statements answers with its last command only.
    residue = text.includes(";") ? residueOfText(text) : callsResidue(text);
    if (known.size < CAPACITY && text.length <= LONGEST) known.set(text, residue);
  }
  return residue;
}

/**
 * What the command tag alone tells of a statement's residue, `undefined` where the tag says
 * nothing (a query, DML): a one-shot, whose text `mayLeaveState` already found clean, reads no
 * further.
 *
 * @example Reading a command tag
 * ```ts
 * import { residueOfCommand, RESETTABLE } from "./session_state.ts";
 *
 * residueOfCommand("SET", "/* tag *\/ SET search_path TO a") === RESETTABLE; // true
 * residueOfCommand("SELECT", "SELECT 1"); // undefined
 * ```
 */
export function residueOfCommand(command: string, text: string): Residue | undefined {
  switch (command) {
    case "SET":
      if (!TRANSACTION_SET.test(text)) return atLeast(RESETTABLE, text);
      // The tag is the last statement's: after a leading SET LOCAL, a later one may be a
      // session SET.
      return text.includes(";") ? residueOfText(text) : CLEAN;
    case "RESET":
    case "LISTEN":
      return atLeast(RESETTABLE, text);
    case "DECLARE CURSOR":
      // Only a cursor WITH HOLD outlives its transaction (one without is refused outside a
      // block): Kysely's stream() declares one per stream.
      if (text.includes(";")) return residueOfText(text);
      return HOLD.test(text) ? RESETTABLE : CLEAN;
    case "PREPARE":
    case "LOAD":
    // The drivers' own prepared statements (and the pool's BEGIN and COMMIT) dropped: the
    // next checkout's first use of each would fail, inside its transaction.
    case "DEALLOCATE":
    case "DEALLOCATE ALL":
    case "DISCARD ALL":
      return UNRESETTABLE;
    case "DO":
    case "CALL":
      return atLeast(BODY.test(text) || CALLS.test(text) ? RESETTABLE : CLEAN, text);
  }
  return undefined;
}

/**
 * `residue`, read from the command tag, or more when `text` holds several statements: the tag
 * is the last one's, and one before it may have left what only a new session clears (a
 * PREPARE before a SET used to count as resettable and outlive the checkout).
 */
function atLeast(residue: Residue, text: string): Residue {
  return text.includes(";") && LEADS_UNRESETTABLE.test(text) ? UNRESETTABLE : residue;
}

/** Texts whose residue is remembered at most: statements recur, and a lookup beats a scan. */
const CAPACITY = 4096;
/** Longer texts (values spliced in, bulk inserts) are scanned each time, never kept. */
const LONGEST = 1024;
const known = new Map<string, Residue>();

/**
 * What `text` may have left on its session, from the text alone (`db.sql`, whose command tags
 * the pool does not see). Errs towards a reset: one round trip at check-in.
 *
 * @example Reading a template's text
 * ```ts
 * import { residueOfText, UNRESETTABLE } from "./session_state.ts";
 *
 * residueOfText("PREPARE mine AS SELECT 1") === UNRESETTABLE; // true
 * residueOfText("UPDATE t SET v = 1"); // 0 (CLEAN): not a leading SET
 * ```
 */
export function residueOfText(text: string): Residue {
  const several = text.includes(";");
  if ((several ? LEADS_UNRESETTABLE : FIRST_UNRESETTABLE).test(text)) return UNRESETTABLE;
  return (several ? LEADS_RESETTABLE : FIRST_RESETTABLE).test(text)
    ? RESETTABLE
    : callsResidue(text);
}

/**
 * Whether `text` may leave state on its session, judged before it is sent (`pool.query`: such
 * a statement runs on a connection of its own, so no one-shot is pipelined behind it into the
 * changed session). Cached per text like `residueOf`.
 *
 * @example Which one-shots must not share their connection
 * ```ts
 * import { mayLeaveState } from "./session_state.ts";
 *
 * mayLeaveState("SET search_path TO tenant_a"); // true
 * mayLeaveState("SELECT set_config('app.tenant', 'a', false)"); // true
 * mayLeaveState("SELECT * FROM items WHERE id = $1"); // false
 * ```
 */
export function mayLeaveState(text: string): boolean {
  let leaves = before.get(text);
  if (leaves === undefined) {
    leaves = residueOfText(text) !== CLEAN;
    if (before.size < CAPACITY && text.length <= LONGEST) before.set(text, leaves);
  }
  return leaves;
}

const before = new Map<string, boolean>();

/**
 * What a statement that failed may still have left: a session advisory lock it took before the
 * error (the abort of its transaction does not release it) and, in a text of several
 * statements, what those before it committed. Errs towards a reset: failures are rare.
 *
 * @example Reading a failed statement's residue
 * ```ts
 * import { residueOfFailure, RESETTABLE } from "./session_state.ts";
 *
 * residueOfFailure("SELECT pg_advisory_lock(id) FROM jobs") === RESETTABLE; // true
 * residueOfFailure("INSERT INTO t VALUES (1)"); // 0 (CLEAN)
 * ```
 */
export function residueOfFailure(text: string): Residue {
  return text.includes(";") ? residueOfText(text) : callsResidue(text);
}

/**
 * What a `db.sql` template may have left, read from its whole text (values as `$1`, `$2`, ...:
 * `set_config('app.tenant', ${t}, true)` is transaction-local), cached per template: its
 * strings array is the same object at each call of one call site.
 */
export function residueOfTemplate(strings: readonly string[]): Residue {
  let residue = templates.get(strings);
  if (residue === undefined) {
    let text = strings[0] ?? "";
    for (let i = 1; i < strings.length; i++) text += `$${i}${strings[i]}`;
    residue = residueOfText(text);
    templates.set(strings, residue);
  }
  return residue;
}

const templates = new WeakMap<readonly string[], Residue>();

function callsResidue(text: string): Residue {
  if (!CALLS.test(text)) return CLEAN;
  // Only transaction-local set_config calls: every set_config is one of them.
  if (LOCKS_OR_TEMP.test(text)) return RESETTABLE;
  return (text.match(SET_CONFIG)?.length ?? 0) === (text.match(LOCAL_SET_CONFIG)?.length ?? 0)
    ? CLEAN
    : RESETTABLE;
}

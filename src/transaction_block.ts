/**
 * Transaction blocks the pool did not open itself: a `BEGIN` sent through `db.sql`, through
 * `sql.unsafe`, or inside a text of several statements. Command tags cannot follow those (the
 * template's result is the caller's; a text of several statements reports its last command), so
 * the pool goes by the statement texts (only `BEGIN`, `START TRANSACTION` and `... AND CHAIN`
 * leave a transaction block open when their statement ends) and, when one may have, asks the
 * session's last answer where the driver can read it (`DriverSession.inBlock`).
 *
 * @module
 */

import { firstWord, isWord, singleStatement, wordEnd } from "./statement_text.ts";

/**
 * A text that may leave a transaction block open. Words inside literals and PL/pgSQL bodies
 * (`DO $$ BEGIN ... END $$`) match too: that costs a look at the session, never a wrong answer.
 */
const MAY_OPEN_BLOCK = /\b(?:begin|start\s+transaction|and\s+chain)\b/i;

/**
 * Whether `text` only starts a transaction block: as a statement committed by itself it does
 * nothing but leave the caller believing the next statements share a transaction.
 *
 * @example Refusing a BEGIN where every statement commits by itself
 * ```ts
 * import { isBareBegin } from "./transaction_block.ts";
 *
 * isBareBegin("begin isolation level serializable"); // true
 * isBareBegin("/* query tag *\/ START TRANSACTION"); // true
 * isBareBegin("BEGIN; INSERT INTO t VALUES (1); COMMIT"); // false
 * isBareBegin("SELECT 'begin'"); // false
 * ```
 */
export function isBareBegin(text: string): boolean {
  // Checked on every pool.query(): a text starting with any other letter than b or s is done
  // with at its first character.
  const c = text.charCodeAt(0) | 0x20;
  if (c >= 0x61 && c <= 0x7a && c !== 0x62 && c !== 0x73) return false;
  return beginsBlock(text);
}

// One statement, BEGIN or START TRANSACTION, past leading blanks and comments (the server skips
// them too: a BEGIN behind a query tag is still a BEGIN).
function beginsBlock(text: string): boolean {
  const start = firstWord(text, 0);
  if (start < 0) return false;
  let end = wordEnd(text, start);
  if (isWord(text, start, end, "START")) {
    const next = firstWord(text, end);
    if (next < 0) return false;
    end = wordEnd(text, next);
    if (!isWord(text, next, end, "TRANSACTION")) return false;
  } else if (!isWord(text, start, end, "BEGIN")) {
    return false;
  }
  return singleStatement(text, end);
}

/**
 * Whether `text` may leave a transaction block open when it ends (see `MAY_OPEN_BLOCK`).
 *
 * @example Texts that need a look at the session afterwards
 * ```ts
 * import { mayOpenBlock } from "./transaction_block.ts";
 *
 * mayOpenBlock("INSERT INTO t VALUES (1); BEGIN"); // true
 * mayOpenBlock("COMMIT AND CHAIN"); // true
 * mayOpenBlock("INSERT INTO t VALUES (1)"); // false
 * ```
 */
export function mayOpenBlock(text: string): boolean {
  return MAY_OPEN_BLOCK.test(text);
}

/**
 * Whether `text` holds several statements and may leave a block open: the texts whose `BEGIN`
 * a command tag hides (one statement is seen by its own tag, a bare BEGIN, and AND CHAIN fails
 * outside a block). The semicolon test keeps the pattern off the common path.
 *
 * @example Only texts of several statements can hide a BEGIN
 * ```ts
 * import { mayHideBlock } from "./transaction_block.ts";
 *
 * mayHideBlock("INSERT INTO t VALUES (1); BEGIN"); // true
 * mayHideBlock("BEGIN"); // false: its own tag says BEGIN
 * ```
 */
export function mayHideBlock(text: string): boolean {
  return text.includes(";") && MAY_OPEN_BLOCK.test(text);
}

/**
 * Whether `text` asks to commit: `COMMIT`, `END` or `PREPARE TRANSACTION`, which the server
 * answers with a `ROLLBACK` tag when an earlier statement had failed the transaction.
 *
 * @example Telling a commit that was rolled back from a rollback
 * ```ts
 * import { asksToCommit } from "./transaction_block.ts";
 *
 * asksToCommit("commit work"); // true
 * asksToCommit("PREPARE TRANSACTION 'tx1'"); // true
 * asksToCommit("ROLLBACK"); // false
 * ```
 */
export function asksToCommit(text: string): boolean {
  const start = firstWord(text, 0);
  if (start < 0) return false;
  const end = wordEnd(text, start);
  if (isWord(text, start, end, "COMMIT") || isWord(text, start, end, "END")) return true;
  if (!isWord(text, start, end, "PREPARE")) return false;
  const next = firstWord(text, end);
  return next >= 0 && isWord(text, next, wordEnd(text, next), "TRANSACTION");
}

/**
 * Whether `text` is one statement that ends the transaction block it runs in: `COMMIT`, `END`,
 * `ROLLBACK`, `ABORT` (not `ROLLBACK TO`, not `... AND CHAIN`, not `COMMIT PREPARED` or
 * `ROLLBACK PREPARED`, which run outside blocks) or `PREPARE TRANSACTION`. A statement sent
 * behind it, before its answer, runs after the block has ended.
 *
 * @example Statements after which a transaction group opens the next transaction
 * ```ts
 * import { endsBlock } from "./transaction_block.ts";
 *
 * endsBlock("commit"); // true
 * endsBlock("ROLLBACK TO SAVEPOINT a"); // false: the block stays
 * endsBlock("COMMIT AND CHAIN"); // false: the next block opens at once
 * endsBlock("COMMIT; SELECT 1"); // false: not one statement
 * ```
 */
export function endsBlock(text: string): boolean {
  const start = firstWord(text, 0);
  if (start < 0) return false;
  const end = wordEnd(text, start);
  const next = firstWord(text, end);
  const nextEnd = next < 0 ? next : wordEnd(text, next);
  if (isWord(text, start, end, "PREPARE")) {
    return next >= 0 && isWord(text, next, nextEnd, "TRANSACTION") &&
      singleStatement(text, nextEnd);
  }
  if (
    !isWord(text, start, end, "COMMIT") && !isWord(text, start, end, "END") &&
    !isWord(text, start, end, "ROLLBACK") && !isWord(text, start, end, "ABORT")
  ) {
    return false;
  }
  if (next >= 0) {
    if (isWord(text, next, nextEnd, "PREPARED") || isWord(text, next, nextEnd, "TO")) return false;
    // ROLLBACK WORK TO / ROLLBACK TRANSACTION TO.
    if (isWord(text, next, nextEnd, "WORK") || isWord(text, next, nextEnd, "TRANSACTION")) {
      const after = firstWord(text, nextEnd);
      if (after >= 0 && isWord(text, after, wordEnd(text, after), "TO")) return false;
    }
  }
  // AND CHAIN opens the next block at once (AND NO CHAIN does not match).
  if (/\band\s+chain\b/i.test(text)) return false;
  return singleStatement(text, end);
}

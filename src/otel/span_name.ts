/**
 * Span names: `{command} {db.namespace}` (`SELECT app`), where the command is the statement's
 * first keyword when it is a PostgreSQL command, else just `{db.namespace}`. Low cardinality by
 * construction: a fixed set of keywords times the configured databases.
 *
 * @module
 */

const COMMANDS = new Set([
  "ABORT",
  "ALTER",
  "ANALYZE",
  "BEGIN",
  "CALL",
  "CHECKPOINT",
  "CLOSE",
  "CLUSTER",
  "COMMENT",
  "COMMIT",
  "COPY",
  "CREATE",
  "DEALLOCATE",
  "DECLARE",
  "DELETE",
  "DISCARD",
  "DO",
  "DROP",
  "END",
  "EXECUTE",
  "EXPLAIN",
  "FETCH",
  "GRANT",
  "IMPORT",
  "INSERT",
  "LISTEN",
  "LOAD",
  "LOCK",
  "MERGE",
  "MOVE",
  "NOTIFY",
  "PREPARE",
  "REASSIGN",
  "REFRESH",
  "REINDEX",
  "RELEASE",
  "RESET",
  "REVOKE",
  "ROLLBACK",
  "SAVEPOINT",
  "SECURITY",
  "SELECT",
  "SET",
  "SHOW",
  "START",
  "TABLE",
  "TRUNCATE",
  "UNLISTEN",
  "UPDATE",
  "VACUUM",
  "VALUES",
  "WITH",
]);

/** Longest command keyword: scanning stops after this many letters. */
const LONGEST = 10;

const SPACE = 32;
const TAB = 9;
const LF = 10;
const CR = 13;
const DASH = 45;
const SLASH = 47;
const STAR = 42;
const LEFT_PAREN = 40;

/**
 * The statement's first keyword, upper-cased, when it is a PostgreSQL command; skips leading
 * white space, comments and opening parentheses. Reads a few characters, never the whole text.
 */
export function commandOf(text: string): string | undefined {
  const n = text.length;
  let i = 0;
  for (;;) {
    if (i >= n) return undefined;
    const c = text.charCodeAt(i);
    if (c === SPACE || c === TAB || c === LF || c === CR || c === LEFT_PAREN) {
      i++;
    } else if (c === DASH && text.charCodeAt(i + 1) === DASH) {
      const end = text.indexOf("\n", i + 2);
      if (end < 0) return undefined;
      i = end + 1;
    } else if (c === SLASH && text.charCodeAt(i + 1) === STAR) {
      // PostgreSQL block comments nest.
      let depth = 1;
      i += 2;
      while (depth > 0) {
        if (i >= n) return undefined;
        if (text.charCodeAt(i) === SLASH && text.charCodeAt(i + 1) === STAR) {
          depth++;
          i += 2;
        } else if (text.charCodeAt(i) === STAR && text.charCodeAt(i + 1) === SLASH) {
          depth--;
          i += 2;
        } else i++;
      }
    } else break;
  }
  let end = i;
  while (end < n && end - i <= LONGEST) {
    const c = text.charCodeAt(end) | 0x20; // lower-case ASCII letters
    if (c < 97 || c > 122) break;
    end++;
  }
  if (end === i || end - i > LONGEST) return undefined;
  const word = text.slice(i, end).toUpperCase();
  return COMMANDS.has(word) ? word : undefined;
}

/** Span names per database and command, made once each. */
export class SpanNames {
  readonly #byDatabase = new Map<string, Map<string | undefined, string>>();

  /** `{command} {database}`, or `{database}` when the first keyword is not a command. */
  of(text: string, database: string): string {
    const command = commandOf(text);
    let names = this.#byDatabase.get(database);
    if (names === undefined) {
      names = new Map();
      this.#byDatabase.set(database, names);
    }
    let name = names.get(command);
    if (name === undefined) {
      name = command === undefined ? database : `${command} ${database}`;
      names.set(command, name);
    }
    return name;
  }
}

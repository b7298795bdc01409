/**
 * What a statement's text says about it without parsing SQL: its command keyword, whether it is
 * a single operation (then the keyword is its `db.operation.name`), and the span name
 * `{db.operation.name} {db.namespace}` (`SELECT app`), or just `{db.namespace}` when the
 * operation is not known. Low cardinality by construction: a fixed set of keywords times the
 * configured databases.
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

const SEMICOLON = 59;

/** Whether `text` holds one statement at most: no semicolon but trailing ones. */
function oneStatement(text: string): boolean {
  const semicolon = text.indexOf(";");
  if (semicolon < 0) return true;
  for (let i = semicolon + 1; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c !== SEMICOLON && c !== SPACE && c !== TAB && c !== LF && c !== CR) return false;
  }
  return true;
}

/**
 * The statement's `db.operation.name`: its command keyword (see {@linkcode commandOf}) when
 * that keyword says what the whole text does, else undefined. The conventions' PostgreSQL page
 * advises against taking the operation name from the query text, because one text may hold
 * several operations; the keyword is taken only where that cannot be, so there is none for:
 *
 * - a text of several statements (without parameters the simple protocol runs them all; a
 *   semicolon inside a literal or a comment counts too: no name rather than a wrong one);
 * - `WITH`: the operation follows the common table expressions, which may write as well;
 * - a first word that is not a PostgreSQL command.
 *
 * Upper-cased, unlike the conventions' advice to keep the application's case: SQL keywords are
 * case-insensitive and PostgreSQL names its commands in capitals (as in its command tags),
 * while query builders write `select` and people `SELECT`; one operation must not become two
 * metric series.
 */
export function operationOf(text: string): string | undefined {
  const command = commandOf(text);
  if (command === undefined || command === "WITH" || !oneStatement(text)) return undefined;
  return command;
}

/** Span names per database and operation, made once each. */
export class SpanNames {
  readonly #byDatabase = new Map<string, Map<string | undefined, string>>();

  /** `{operation} {database}`, or `{database}` when the operation is not known. */
  of(operation: string | undefined, database: string): string {
    let names = this.#byDatabase.get(database);
    if (names === undefined) {
      names = new Map();
      this.#byDatabase.set(database, names);
    }
    let name = names.get(operation);
    if (name === undefined) {
      name = operation === undefined ? database : `${operation} ${database}`;
      names.set(operation, name);
    }
    return name;
  }
}

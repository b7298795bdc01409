/**
 * Reading the words of a statement text the way the server's lexer does where it matters to the
 * pool: blanks, `--` line comments and `/* *\/` block comments (which nest in PostgreSQL) are
 * skipped, and opening parentheses too. The pool reads only leading words and semicolons; a
 * word or `;` inside a literal is never taken for a keyword before the first word, because a
 * statement cannot start with a literal.
 *
 * @module
 */

/**
 * Index of the first word at or after `from`, past blanks, comments and opening parentheses;
 * -1 when there is none (something else comes first, or a comment never ends).
 *
 * @example Finding the keyword behind a query tag
 * ```ts
 * import { firstWord } from "./statement_text.ts";
 *
 * firstWord("/* a /* nested *\/ comment *\/ BEGIN", 0); // 29
 * firstWord("'literal'", 0); // -1
 * ```
 */
export function firstWord(text: string, from: number): number {
  let i = from;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d || c === 0x0c || c === 0x28) {
      i++;
    } else if (c === 0x2d && text.charCodeAt(i + 1) === 0x2d) { // --
      const eol = text.indexOf("\n", i);
      if (eol < 0) return -1;
      i = eol + 1;
    } else if (c === 0x2f && text.charCodeAt(i + 1) === 0x2a) { // /*
      i = commentEnd(text, i + 2);
      if (i < 0) return -1;
    } else {
      return isLetter(c) ? i : -1;
    }
  }
  return -1;
}

// Past the `*/` that closes a block comment opened before `from`, counting nested ones; -1
// when it never closes.
function commentEnd(text: string, from: number): number {
  let depth = 1;
  let i = from;
  while (i < text.length - 1) {
    const c = text.charCodeAt(i);
    if (c === 0x2a && text.charCodeAt(i + 1) === 0x2f) { // */
      i += 2;
      if (--depth === 0) return i;
    } else if (c === 0x2f && text.charCodeAt(i + 1) === 0x2a) { // /*
      i += 2;
      depth++;
    } else {
      i++;
    }
  }
  return -1;
}

/**
 * Index just past the word starting at `from`.
 *
 * @example Slicing the first keyword
 * ```ts
 * import { firstWord, wordEnd } from "./statement_text.ts";
 *
 * const text = "  start transaction";
 * const start = firstWord(text, 0);
 * text.slice(start, wordEnd(text, start)); // "start"
 * ```
 */
export function wordEnd(text: string, from: number): number {
  let i = from;
  while (i < text.length && isLetter(text.charCodeAt(i))) i++;
  return i;
}

/**
 * Whether the word of `text` from `start` to `end` is `upper` (an upper-case keyword), in any
 * case, without building a string.
 *
 * @example Comparing a keyword
 * ```ts
 * import { isWord } from "./statement_text.ts";
 *
 * isWord("begin;", 0, 5, "BEGIN"); // true
 * ```
 */
export function isWord(text: string, start: number, end: number, upper: string): boolean {
  if (end - start !== upper.length) return false;
  for (let i = 0; i < upper.length; i++) {
    // ASCII letters only (see isLetter): clearing bit 0x20 upper-cases them, `_` stays `_`.
    const c = text.charCodeAt(start + i);
    if ((c === 0x5f ? c : c & ~0x20) !== upper.charCodeAt(i)) return false;
  }
  return true;
}

/**
 * No second statement: every `;` is followed only by blanks and `;`. A `;` inside a literal or
 * a comment counts as a separator too, so a doubt always reads as "several statements".
 *
 * @example One statement with a trailing semicolon, and two
 * ```ts
 * import { singleStatement } from "./statement_text.ts";
 *
 * singleStatement("SELECT 1;", 0); // true
 * singleStatement("SELECT 1; SELECT 2", 0); // false
 * ```
 */
export function singleStatement(text: string, from: number): boolean {
  const semicolon = text.indexOf(";", from);
  return semicolon < 0 || /^[\s;]*$/.test(text.slice(semicolon + 1));
}

function isLetter(c: number): boolean {
  return (c >= 0x41 && c <= 0x5a) || (c >= 0x61 && c <= 0x7a) || c === 0x5f;
}

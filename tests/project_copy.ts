// A copy of the project where a fresh clone often sits: inside a directory the PostgreSQL
// server user cannot traverse (mktemp -d is mode 700; /root/app in a container). Shared by
// tests/anywhere_test.ts (the suite's smoke subset from there) and tests/examples_test.ts
// (`npm run demo` from there).
import { spawnSync } from "node:child_process";
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import process from "node:process";
import { killAll } from "./harness/datadir.ts";
import { ROOT } from "./tools.ts";

/** Runs a command synchronously; throws with its stderr when it does not exit 0. */
function mustRun(cmd: string, args: string[], cwd = ROOT): string {
  const r = spawnSync(cmd, args, { cwd, encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    throw new Error(`${cmd} ${args.join(" ")} failed: ${r.error?.message ?? ""}${r.stderr}`);
  }
  return r.stdout;
}

/**
 * Copies the project's files into `dest`: the tracked ones plus new ones git does not ignore,
 * as they are in the work tree, and node_modules.
 *
 * Why the work tree and not `git clone` of HEAD, which is what a user does: the suite runs
 * before a change is committed, and a clone would test the last commit instead of the code
 * under test. Listing files through git still leaves out what a clone would not have (ignored
 * build output such as dist/, scratch files), so the copy depends on nothing a clone lacks.
 * node_modules stands in for `npm install`: the same lockfile, without the network.
 */
export function copyProject(dest: string): void {
  // safe.directory: the checkout may belong to another user than the one running the tests.
  const git = ["-c", `safe.directory=${ROOT}`, "ls-files", "-z", "--cached", "--others"];
  const listed = mustRun("git", [...git, "--exclude-standard"]);
  for (const rel of listed.split("\0").filter(Boolean)) {
    if (!existsSync(join(ROOT, rel))) continue; // deleted in the work tree
    mkdirSync(dirname(join(dest, rel)), { recursive: true });
    copyFileSync(join(ROOT, rel), join(dest, rel));
  }
  // node_modules must be physically inside (a symlink out would make the binaries reachable
  // again). Hard links are instant on the same filesystem; a real copy otherwise.
  const from = join(ROOT, "node_modules");
  const to = join(dest, "node_modules");
  if (spawnSync("cp", ["-al", from, to]).status !== 0) {
    rmSync(to, { recursive: true, force: true });
    mustRun("cp", ["-a", from, to]);
  }
}

/** A project copy made by {@link copyAway}. */
export interface ProjectCopy {
  /** The copy's root (cwd for `npm test` / `npm run demo`), inside a mode-700 directory. */
  readonly project: string;
  /** The mode-700 directory holding the copy. */
  readonly outer: string;
  /**
   * A fresh, empty directory every user can traverse, for the copy's runs as TMPDIR: the
   * harness then makes its readable copy of the binaries from scratch, as on a first run.
   */
  readonly tmp: string;
  /** Kills whatever still works inside the copy or its TMPDIR (after a timeout) and deletes both. */
  remove(): void;
}

/**
 * Copies the project (see {@link copyProject}) into a new mode-700 directory. Both directories
 * are named like the harness's process roots (tmpdir()/pgdbpool-<pid>-...), so that, should
 * this process be killed, a later run's reaping (harness/datadir.ts) removes them.
 */
export function copyAway(label: string): ProjectCopy {
  const prefix = join(tmpdir(), `pgdbpool-${process.pid}-${label}-`);
  const outer = mkdtempSync(prefix); // mode 700: the point of the copy
  const tmp = mkdtempSync(prefix);
  chmodSync(tmp, 0o755);
  const remove = () => {
    killAll(outer);
    killAll(tmp);
    rmSync(outer, { recursive: true, force: true });
    rmSync(tmp, { recursive: true, force: true });
  };
  try {
    const project = join(outer, "project");
    copyProject(project);
    return { project, outer, tmp, remove };
  } catch (err) {
    remove();
    throw err;
  }
}

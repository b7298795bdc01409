/**
 * Real workerd for the edge tests: a worker bundled as workerd runs it, and a workerd process
 * serving a capnp config until the test is done.
 *
 * @module
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { waitFor } from "./wait.ts";
import { esbuildBin, http, runCommand, Service, workerdBin } from "../tools.ts";

/**
 * Bundles `entry` into `outfile` with esbuild as workerd runs it: `--conditions=workerd` selects
 * postgres.js's `cloudflare:sockets` build. `platform` "browser" picks the browser builds of
 * dependencies that have one (the OpenTelemetry SDK).
 */
export async function bundleWorker(
  entry: string,
  outfile: string,
  platform: "neutral" | "browser" = "neutral",
): Promise<void> {
  const build = await runCommand(esbuildBin(), [
    entry,
    "--bundle",
    "--conditions=workerd",
    `--platform=${platform}`,
    "--format=esm",
    "--external:cloudflare:sockets",
    "--external:node:*",
    `--outfile=${outfile}`,
    "--log-level=warning",
  ]);
  assert.equal(build.code, 0, `esbuild failed for ${entry}:\n${build.stdout}${build.stderr}`);
}

/**
 * Starts workerd on `dir`'s `config.capnp` and waits until `base` answers (404 on `/`: the
 * workers answer nothing there); when it does not, workerd is stopped and the error carries its
 * output.
 */
export async function startWorkerd(
  dir: string,
  base: string,
  extraArgs: readonly string[] = [],
): Promise<Service> {
  const workerd = new Service("workerd", workerdBin(), [
    "serve",
    join(dir, "config.capnp"),
    ...extraArgs,
  ], { cwd: dir });
  await waitFor(async () => (await http(`${base}/`, { timeoutMs: 2000 })).status === 404, {
    timeoutMs: 30_000,
    message: `workerd answering on ${base}`,
  }).catch(async (err) => {
    await stopWorkerd(workerd);
    throw new Error(`${err.message}\n--- workerd output ---\n${workerd.output}`, { cause: err });
  });
  return workerd;
}

/** Stops workerd: SIGTERM, then a kill when it has not exited within 10 s. */
export async function stopWorkerd(workerd: Service | undefined): Promise<void> {
  if (workerd === undefined) return;
  workerd.kill("SIGTERM");
  await workerd.waitExit(10_000).catch(() => workerd.stop());
}

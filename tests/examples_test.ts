// The examples, started as real processes. The server examples answer concurrent requests and
// shut down cleanly on SIGTERM and on SIGINT, closing their pools, leaving no server connection
// behind. The demo, run as `npm run demo` from a fresh copy of the project, runs its faults to
// the end in under 30 s and leaves nothing running, also when interrupted.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { freePorts, processesIn } from "./harness/exec.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { copyAway, type ProjectCopy } from "./project_copy.ts";
import { bunBin, denoBin, getFresh, node24Bin, runCommand, Service } from "./tools.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;
const services: Service[] = [];

before(async () => {
  cluster = await startCluster({ replicas: 0 });
}, { timeout: 120_000 });

after(async () => {
  await Promise.all(services.map((s) => s.stop()));
  await cluster?.close();
}, { timeout: 60_000 });

const SIGNALS = ["SIGTERM", "SIGINT"] as const;
const EXIT_DEADLINE_MS = 15_000;

function start(name: string, cmd: string, args: string[], env: Record<string, string>): Service {
  const svc = new Service(name, cmd, args, {
    env: { PGDBPOOL_DB: JSON.stringify(cluster.endpoints()), ...env },
  });
  services.push(svc);
  return svc;
}

async function waitHealthy(svc: Service, base: string): Promise<void> {
  await waitFor(async () => {
    if (svc.exited) throw new Error(`${svc.name} exited: ${svc.output}`);
    return (await getFresh(`${base}/health`, 2000)).status === 200;
  }, { timeoutMs: 30_000, message: `${svc.name} answering ${base}/health` }).catch((err) => {
    throw new Error(`${err.message}\n--- ${svc.name} output ---\n${svc.output}`, { cause: err });
  });
}

/** Sends `count` concurrent requests over fresh connections; checks every answer. */
async function burst(
  base: string,
  count: number,
  offset = 0,
): Promise<Array<Record<string, unknown>>> {
  const answers = await Promise.all(
    Array.from({ length: count }, (_, i) => getFresh(`${base}/query?n=${offset + i}`)),
  );
  return answers.map((a, i) => {
    assert.equal(a.status, 200, `request ${offset + i}: ${a.status} ${a.body}`);
    const body = JSON.parse(a.body);
    assert.equal(body.n, offset + i);
    assert.equal(body.port, cluster.primary.port);
    return body;
  });
}

/** Bursts until answers came from `want` distinct values of `key` (isolates, processes). */
async function spread(
  base: string,
  batch: number,
  key: string,
  want: number,
): Promise<Set<unknown>> {
  const seen = new Set<unknown>();
  let offset = 0;
  await waitFor(async () => {
    for (const body of await burst(base, batch, offset)) seen.add(body[key]);
    offset += batch;
    return seen.size >= want;
  }, { timeoutMs: 20_000, message: `answers from ${want} distinct ${key}s` });
  return seen;
}

async function noConnectionsLeft(app: string): Promise<void> {
  await waitFor(async () => (await cluster.countConnections({ applicationName: app })) === 0, {
    timeoutMs: 10_000,
    message: `no server connection with application_name ${app}`,
  });
}

describe("examples/deno_serve.ts (deno serve --parallel, a pool per isolate)", () => {
  for (const signal of SIGNALS) {
    it(`answers from every isolate and stops on ${signal}`, async () => {
      const app = `ex_deno_serve_${signal.toLowerCase()}`;
      const [port] = await freePorts(1);
      const base = `http://127.0.0.1:${port}`;
      const svc = start(`deno serve (${signal})`, denoBin(), [
        "serve",
        "--parallel",
        "--host",
        "127.0.0.1",
        "--port",
        String(port),
        "--allow-net",
        "--allow-env",
        "examples/deno_serve.ts",
      ], { DENO_JOBS: "2", PGDBPOOL_APP: app, PGDBPOOL_CONNECTIONS: "4" });
      await svc.waitForOutput(/(isolate \w+: ready[\s\S]*){2}/);
      await waitHealthy(svc, base);
      // Bursts no larger than one isolate's connections: non-threaded mode never queues, so a
      // larger burst landing on one isolate would (correctly) get 503s.
      const isolates = await spread(base, 4, "isolate", 2);
      assert.equal(isolates.size, 2);
      assert.ok(
        (await cluster.countConnections({ applicationName: app })) > 0,
        "connections should be open",
      );

      svc.kill(signal);
      const exit = await svc.waitExit(EXIT_DEADLINE_MS);
      assert.equal(exit.signal, null, `killed by ${exit.signal}:\n${svc.output}`);
      assert.equal(exit.code, 0, svc.output);
      for (const isolate of isolates) {
        assert.match(svc.output, new RegExp(`isolate ${isolate}: ${signal}, closing the pool`));
        assert.match(svc.output, new RegExp(`isolate ${isolate}: pool closed`));
      }
      await noConnectionsLeft(app);
    });
  }
});

describe("examples/deno_threaded.ts (Deno.serve, one shared threaded pool)", () => {
  for (const signal of SIGNALS) {
    it(`queues more concurrent requests than connections and stops on ${signal}`, async () => {
      const app = `ex_deno_threaded_${signal.toLowerCase()}`;
      const svc = start(`deno threaded (${signal})`, denoBin(), [
        "run",
        "--allow-net",
        "--allow-env",
        "examples/deno_threaded.ts",
      ], { PORT: "0", PGDBPOOL_APP: app, PGDBPOOL_CONNECTIONS: "3" });
      const [, base] = await svc.waitForOutput(/listening on (http:\/\/[\d.]+:\d+)\//);
      await waitHealthy(svc, base);
      const answers = await burst(base, 24);
      // 24 concurrent requests shared 3 server connections, waiting their turn.
      const backends = new Set(answers.map((a) => a.backend));
      assert.ok(backends.size <= 3, `used ${backends.size} server connections`);
      assert.equal(await cluster.countConnections({ applicationName: app }), backends.size);

      svc.kill(signal);
      const exit = await svc.waitExit(EXIT_DEADLINE_MS);
      assert.equal(exit.signal, null, `killed by ${exit.signal}:\n${svc.output}`);
      assert.equal(exit.code, 0, svc.output);
      assert.match(svc.output, new RegExp(`${signal}: shutting down[\\s\\S]*pool closed`));
      await noConnectionsLeft(app);
    });
  }
});

describe("examples/bun_serve.ts (Bun.serve with reusePort, two processes)", () => {
  for (const signal of SIGNALS) {
    it(`spreads requests over both processes and stops both on ${signal}`, async () => {
      const app = `ex_bun_serve_${signal.toLowerCase()}`;
      const [port] = await freePorts(1);
      const base = `http://127.0.0.1:${port}`;
      const env = { PORT: String(port), PGDBPOOL_APP: app, PGDBPOOL_CONNECTIONS: "3" };
      const procs = [1, 2].map((i) =>
        start(`bun serve #${i} (${signal})`, bunBin(), ["examples/bun_serve.ts"], env)
      );
      for (const p of procs) await p.waitForOutput(/process \d+ listening on/);
      await waitHealthy(procs[0], base);
      const pids = await spread(base, 12, "pid", 2);
      assert.deepEqual([...pids].sort(), procs.map((p) => p.child.pid).sort());
      assert.ok(
        (await cluster.countConnections({ applicationName: app })) > 0,
        "connections should be open",
      );

      for (const p of procs) p.kill(signal);
      for (const p of procs) {
        const exit = await p.waitExit(EXIT_DEADLINE_MS);
        assert.equal(exit.signal, null, `${p.name} killed by ${exit.signal}:\n${p.output}`);
        assert.equal(exit.code, 0, p.output);
        assert.match(p.output, new RegExp(`${signal}, shutting down[\\s\\S]*pool closed`));
      }
      await noConnectionsLeft(app);
    });
  }
});

describe("npm run demo (scripts/demo.mjs), from a fresh copy of the project", () => {
  // The way users run it: `npm run demo` is Node running scripts/demo.mjs, which runs
  // examples/demo.ts under Deno, whatever runtime runs this test. From a copy in a mode-700
  // directory with a fresh TMPDIR, like a first run in a `git clone` made in `mktemp -d`: as
  // root, the harness first makes its readable copy of the PostgreSQL binaries, and that time
  // counts too.
  let copy: ProjectCopy;
  before(() => {
    copy = copyAway("demo");
  });
  after(() => copy?.remove());

  /** Promised in the README and the demo's own description: the whole run, start to exit. */
  const PROMISED_MS = 30_000;

  const demo = (): [string, string[], { cwd: string; env: Record<string, string> }] => [
    node24Bin(),
    ["scripts/demo.mjs"],
    // "" unsets the bun-native pass's driver choice (testDriver treats it as unset; Deno's
    // child_process cannot remove an inherited variable): users do not set it.
    { cwd: copy.project, env: { TMPDIR: copy.tmp, PGDBPOOL_TEST_DRIVER: "" } },
  ];

  /** Nothing still works in the demo's cluster directory, the copy or its TMPDIR (the Deno
   * process included), and the cluster directory is gone. */
  function nothingLeft(output: string): void {
    const dir = output.match(/data in (\S+)/)?.[1];
    assert.ok(dir, `no data directory in the output:\n${output}`);
    assert.ok(dir.startsWith(copy.tmp + "/"), `${dir} is not in the run's TMPDIR ${copy.tmp}`);
    for (const d of [dir, copy.outer, copy.tmp]) {
      assert.deepEqual(processesIn(d) ?? [], [], `processes left in ${d}`);
    }
    assert.equal(existsSync(dir), false, `${dir} is still there`);
  }

  it("follows every fault, loses no acknowledged write and leaves nothing running, in under 30 s", async () => {
    const [cmd, args, opts] = demo();
    const started = performance.now();
    const run = await runCommand(cmd, args, { ...opts, timeoutMs: 120_000 });
    const took = performance.now() - started;
    const out = run.stdout + run.stderr;
    console.log(`npm run demo took ${(took / 1000).toFixed(1)} s`);
    assert.equal(run.code, 0, out);
    assert.match(out, /^\s+acknowledged writes lost\s+0$/m);
    assert.match(out, /^\s+read-your-writes reads\s+\d+, 0 without their write/m);
    // The pool's own events, in the timeline.
    assert.match(out, /pool\s+replicalagging: :\d+ excluded from "read"/);
    assert.match(out, /pool\s+replicacaughtup: :\d+ back in "read"/);
    assert.match(out, /pool\s+endpointdown :\d+/);
    assert.match(out, /pool\s+rolechange :\d+ replica -> primary/);
    assert.match(out, /app\s+first write on the new primary :\d+/);
    assert.match(out, /app\s+reads reach the rejoined replica :\d+/);
    assert.match(out, /all servers stopped, data deleted/);
    assert.ok(took < PROMISED_MS, `took ${(took / 1000).toFixed(1)} s:\n${out}`);
    nothingLeft(out);
  });

  for (const [signal, code] of [["SIGINT", 130], ["SIGTERM", 143]] as const) {
    it(`stops its servers on ${signal} in the middle of the run (exit ${code})`, async () => {
      const [cmd, args, opts] = demo();
      // The signal goes to Node, which passes it on to the demo and exits with its code.
      const svc = new Service("npm run demo", cmd, args, opts);
      services.push(svc);
      await svc.waitForOutput(/fault\s+replay paused/, 90_000);
      svc.kill(signal);
      const exit = await svc.waitExit(EXIT_DEADLINE_MS);
      assert.equal(exit.code, code, svc.output);
      assert.match(svc.output, new RegExp(`${signal}: stopping the servers`));
      nothingLeft(svc.output);
    });
  }
});

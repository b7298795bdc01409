import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import process from "node:process";
import { join } from "node:path";
import {
  buildReport,
  CHARTS,
  formatBytes,
  formatNs,
  type RuntimeResults,
  writeReport,
} from "../bench/report.ts";
import { parseWrk, processCpuUs } from "../bench/http/run.ts";
import type { SustainedResults } from "../bench/sustained.ts";
import { escapeHtml, queryCount, renderFortunes, updateParams } from "../bench/http/tfb.ts";

// Two runtimes: Deno with two rounds (so ratios have a range), Bun with one and no Bun driver.
// The fixture predates the sustained-load suite: it stands for an older results file.
const older: RuntimeResults[] = JSON.parse(
  readFileSync(new URL("./fixtures/bench_sample.json", import.meta.url), "utf8"),
);

/**
 * A sustained-load result: 3 windows of 1000 after 100 untimed statements; with `calm` (before
 * and after statements/s per contender), calm runs of 250 statements around them, else the
 * shape of a run written before the calm runs existed.
 */
function sustained(
  runs: Record<string, number[]>,
  calm?: Record<string, [number, number]>,
): SustainedResults {
  return {
    windows: 3,
    statements: 1000,
    warmup: 100,
    callers: 100,
    connections: 10,
    ...(calm && { calm_callers: 10, calm_statements: 250, pause_ms: 1000 }),
    runs: Object.entries(runs).map(([name, ops_per_s]) => ({
      name,
      ops_per_s,
      ...(calm && { calm_before_ops_per_s: calm[name][0], calm_after_ops_per_s: calm[name][1] }),
    })),
    notes: {},
  };
}

const sample: RuntimeResults[] = structuredClone(older);
sample[0].sustained = sustained({
  "postgres.js sql`` tagged template": [16000, 12000, 8000],
  "pgdbpool pool.query": [20000, 21000, 22000],
  "pg Pool.query()": [15000, 15000, 15000],
});
// Bun ran them in reverse order; the report lists them in its own order.
sample[1].sustained = sustained({
  "pg Pool.query()": [14000, 15000, 15000],
  "Bun SQL sql`` tagged template": [45000, 45000, 45000],
  "pgdbpool pool.query": [40000, 40000, 40000],
  "postgres.js sql`` tagged template": [23000, 12000, 6000],
}, {
  "pg Pool.query()": [10000, 10000],
  "Bun SQL sql`` tagged template": [20000, 21000],
  "pgdbpool pool.query": [16000, 16000],
  "postgres.js sql`` tagged template": [18000, 7200],
});

/** The lines of the report section under `### title`, up to the next one. */
function section(markdown: string, title: string): string[] {
  const lines = markdown.split("\n");
  const start = lines.indexOf(`### ${title}`);
  assert.notEqual(start, -1, `no section ${title}`);
  const end = lines.findIndex((l, i) => i > start && l.startsWith("### "));
  return lines.slice(start + 1, end === -1 ? undefined : end);
}

/** The markdown table row whose first cell is `first`. */
function row(markdown: string, first: string): string {
  const line = markdown.split("\n").find((l) => l.startsWith(`| ${first} |`));
  assert.ok(line, `no table row starting with ${first}`);
  return line;
}

/** Minimal XML well-formedness: balanced tags, quoted attributes, escaped text. */
function assertWellFormed(svg: string): void {
  const stack: string[] = [];
  const tag = /<(\/?)([A-Za-z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/y;
  let i = 0;
  while (i < svg.length) {
    const lt = svg.indexOf("<", i);
    const text = svg.slice(i, lt === -1 ? svg.length : lt);
    assert.doesNotMatch(text, /&(?!(amp|lt|gt|quot|apos|#\d+);)|>/, `unescaped text: ${text}`);
    if (lt === -1) break;
    tag.lastIndex = lt;
    const m = tag.exec(svg);
    assert.ok(m, `malformed tag at ${lt}: ${svg.slice(lt, lt + 60)}`);
    const [whole, closing, name, , selfClosing] = m;
    if (closing) assert.equal(stack.pop(), name, `mismatched </${name}>`);
    else if (!selfClosing) stack.push(name);
    i = lt + whole.length;
  }
  assert.deepEqual(stack, [], "unclosed tags");
}

function attr(element: string, name: string): number {
  const m = new RegExp(`\\s${name}="([^"]*)"`).exec(element);
  assert.ok(m, `no ${name} in ${element}`);
  return Number(m[1]);
}

function elements(svg: string, pattern: RegExp): string[] {
  return [...svg.matchAll(pattern)].map((m) => m[0]);
}

describe("bench report", () => {
  const report = buildReport(sample);
  const target = (id: string, runtime: string) =>
    report.targets.find((t) => t.id === id && t.runtime === runtime)!;
  const deno = (id: string) => target(id, "Deno 2.9.6");
  const bun = (id: string) => target(id, "Bun 1.4.5");

  it("evaluates each target per runtime from per-round ratios", () => {
    // Checkout: slowest pgdbpool entry with `using` (threaded) against reserve(): 2500/200 and
    // 2000/250. The slower entry without `using` is informative and does not count.
    assert.deepEqual(deno("checkout").rounds, [12.5, 8]);
    assert.equal(deno("checkout").ratio, 10.25);
    assert.equal(deno("checkout").verdict, "pass");
    assert.equal(deno("checkout").note, "slowest: pgdbpool threaded, primary");
    // 1 caller: tagged template 100/120 µs, handler 125/120 µs.
    assert.deepEqual(deno("seq-handler").rounds, [0.8, 1]);
    assert.equal(deno("seq-handler").pass, false);
    assert.equal(deno("seq-query").ratio, 1.1);
    assert.equal(deno("c100-query").ratio, 1.125);
    assert.equal(deno("c100-query").pass, true);
    assert.equal(deno("tx").pass, true);
    // p99 waits: 10/10 and 12/10.
    assert.equal(deno("p99").ratio, 1.1);
    assert.equal(deno("p99").pass, false);
  });

  it("pairs rounds by number when a contender ran in only some of them", () => {
    const late = structuredClone(sample[0]);
    const seq = late.benches.find((b) =>
      b.name === "pgdbpool pool.query" && b.group?.startsWith("SELECT 1, 1 caller")
    )!;
    // Only in round 2, next to the tagged template's 120 µs.
    seq.results = [{ ok: { ...seq.results[0].ok, avg: 100e3 }, round: 2 }];
    const t = buildReport([late]).targets.find((x) => x.id === "seq-query")!;
    assert.deepEqual(t.rounds, [1.2]);
  });

  it("marks Bun-only targets n/a on Deno and skipped on Bun without the Bun driver", () => {
    for (const id of ["bun-seq-query", "bun-c100-query", "bun-seq-handler", "http-bun"]) {
      assert.equal(deno(id).verdict, "n/a", id);
      assert.equal(bun(id).verdict, "skipped", id);
      assert.equal(bun(id).pass, false);
      assert.match(bun(id).note!, /driver: "bun" is not accepted/);
    }
    const measured = report.targets.filter((t) =>
      t.runtime === "Bun 1.4.5" && t.verdict !== "skipped"
    );
    assert.ok(measured.every((t) => t.pass), JSON.stringify(measured.filter((t) => !t.pass)));
  });

  it("judges HTTP by its worst route and connection count", () => {
    // /db at 256: 9500 / 10000; the mean of the mirrored runs decides each cell.
    assert.equal(deno("http").ratio, 0.95);
    assert.equal(deno("http").pass, false);
    assert.equal(deno("http").note, "worst: /db, 256 connections");
    assert.equal(deno("http").rounds.length, 4);
    assert.equal(bun("http").ratio, 1);
    assert.equal(bun("http").pass, true);
  });

  it("renders the targets table with ratio, range and verdict per runtime", () => {
    const md = report.markdown;
    assert.match(md, /Sample CPU @ 2\.0GHz \(2 cores/);
    assert.match(md, /Runtimes: Deno 2\.9\.6, Bun 1\.4\.5\..*wrk 4\.1\.0/);
    assert.match(md, /a quiet machine\./);
    assert.match(md, /\| target \| required \| Deno 2\.9\.6 \| Bun 1\.4\.5 \|/);
    assert.match(
      row(
        md,
        "warm checkout + release with `using` vs postgres.js `reserve()` + `release()` (speed-up, slowest pgdbpool entry)",
      ),
      /\| >= 10x \| 10\.3x \(8\.00x–12\.5x\) PASS \(slowest: pgdbpool threaded, primary\) \| 20\.0x PASS/,
    );
    assert.match(
      row(md, "postgres.js driver, 1 caller: handler vs postgres.js tagged template"),
      /\| >= 0\.95x \| 0\.90x \(0\.80x–1\.00x\) FAIL \| 1\.11x PASS \|/,
    );
    assert.match(
      row(md, "Bun driver, 1 caller: `pool.query` vs Bun `SQL` tagged template"),
      /\| >= 0\.90x \| — \| not measured \(see notes\) \|/,
    );
    assert.match(
      row(
        md,
        "HTTP, pool (postgres.js driver) vs direct driver: req/s, worst route and connection count",
      ),
      /0\.95x \(0\.95x–1\.01x\) FAIL \(worst: \/db, 256 connections\)/,
    );
    assert.match(
      row(md, "contention: p99 checkout wait vs pg-pool (earlier target)"),
      /1\.10x \(1\.00x–1\.20x\) FAIL \| 0\.90x PASS/,
    );
  });

  it("shows a third decimal when a ratio rounds to its limit", () => {
    const close: RuntimeResults = structuredClone(sample[1]);
    const key = Object.keys(close.extra).find((k) => k.endsWith(":: pgdbpool acquire()"))!;
    close.extra[key] = [{ ...close.extra[key][0], wait_p99_ns: 10.04e6 }]; // pg-pool: 10 ms
    const md = buildReport([close]).markdown;
    assert.match(
      row(md, "contention: p99 checkout wait vs pg-pool (earlier target)"),
      /\| 1\.004x FAIL \|/,
    );
  });

  it("says how each contender is called, with its throughput and ratio to postgres.js", () => {
    const md = report.markdown;
    assert.ok(
      md.includes(
        "- **postgres.js sql`` tagged template**: `` await sql`SELECT 1` `` on `postgres({ max: 10 })`",
      ),
    );
    assert.ok(md.includes('- **pg Pool.query()**: `await pool.query("SELECT 1")` on npm `pg`'));
    assert.ok(
      md.includes(
        "- **Bun SQL sql`` tagged template**: `` await sql`SELECT 1` `` on Bun's built-in `new SQL({ max: 10 })`",
      ),
    );
    assert.ok(
      md.includes(
        '- **pgdbpool handler**: `using db = pool.handler("q"); await db.query("SELECT 1")`',
      ),
    );
    // 1000 queries per 20 or 25 ms: 1.125x the tagged template at 100 callers.
    assert.equal(
      row(md, "pgdbpool pool.query"),
      "| pgdbpool pool.query | 10.0k/s (1.10x) | 44.4k/s (1.13x) | 10.5k/s (1.05x) | 41.7k/s (1.04x) |",
    );
    assert.match(
      row(md, "Bun SQL sql`` tagged template"),
      /^\| Bun SQL sql`` tagged template \| — \| — \| 25\.0k\/s \(2\.50x\)/,
    );
    assert.match(row(md, "pgdbpool handler (bun driver)"), /\| — \| — \| skipped \| skipped \|$/);
    // One line per reason, naming every entry it kept out.
    assert.match(
      md,
      /- Bun 1\.4\.5: \*\*pgdbpool handler \(bun driver\)\*\*, \*\*pgdbpool pool\.query \(bun driver\)\*\*, \*\*pgdbpool \(bun driver\)\*\* not measured: driver: "bun"/,
    );
  });

  it("tables HTTP, scaling and memory", () => {
    const md = report.markdown;
    assert.ok(
      md.includes(
        "| Deno 2.9.6 | `/db` | 256 | 9500 | 10000 (postgres.js) | 0.95x | 9.00 ms | 8.00 ms |",
      ),
    );
    assert.ok(md.includes("| Bun 1.4.5 | `/fortunes` | 64 | 15000 | 14000 (Bun SQL) | 1.07x |"));
    assert.match(
      md,
      /\| runtime \| contender \| callers = 1 \| callers = 10 \| callers = 100 \| callers = 1000 \|/,
    );
    assert.match(
      md,
      /\| runtime \| contender \| connections = 1 \| connections = 4 \| connections = 16 \| connections = 64 \|/,
    );
    // Fixture: ops = base * (k + 1) * (1 + x / 100), p99 = 200 µs * x * (k + 1).
    assert.ok(
      md.includes(
        "| Deno 2.9.6 | postgres.js sql`` tagged template | 1.0k/s, p99 200 µs | 1.1k/s, p99 2.00 ms |",
      ),
    );
    // Medians of two samples: 153.6 and 184.3 kB heap.
    assert.ok(md.includes("| Deno 2.9.6 | pgdbpool | 169 kB | 461 kB | 5.12 kB | 10.2 kB |"));
    assert.ok(md.includes("| Bun 1.4.5 | Bun SQL | 5.50 kB | 15.0 kB | 3.60 kB | 7.20 kB |"));
  });

  it("tables the sustained load per runtime: first and last window, against postgres.js", () => {
    const lines = section(report.markdown, "Sustained load");
    assert.match(
      lines.join("\n"),
      /100 concurrent callers over 10 connections, .*100 untimed statements and then 3 windows of 1,000 statements back to back/,
    );
    const deno = lines.indexOf("**Deno 2.9.6**"), bun = lines.indexOf("**Bun 1.4.5**");
    assert.ok(deno !== -1 && bun > deno);
    const rows = (from: number, to?: number) =>
      lines.slice(from, to).filter((l) => l.startsWith("| ") && !l.startsWith("| contender"));
    assert.deepEqual(rows(deno, bun), [
      // Written before the calm runs: their columns stay empty.
      "| postgres.js sql`` tagged template | 16.0k/s | 8.0k/s | 0.50x | — | — | — | — |",
      "| pg Pool.query() | 15.0k/s | 15.0k/s | 1.00x | 1.88x | — | — | — |",
      "| pgdbpool pool.query | 20.0k/s | 22.0k/s | 1.10x | 2.75x | — | — | — |",
    ]);
    assert.deepEqual(rows(bun), [
      "| postgres.js sql`` tagged template | 23.0k/s | 6.0k/s | 0.26x | — | 18.0k/s | 7.2k/s | 0.40x |",
      "| Bun SQL sql`` tagged template | 45.0k/s | 45.0k/s | 1.00x | 7.50x | 20.0k/s | 21.0k/s | 1.05x |",
      "| pg Pool.query() | 14.0k/s | 15.0k/s | 1.07x | 2.50x | 10.0k/s | 10.0k/s | 1.00x |",
      "| pgdbpool pool.query | 40.0k/s | 40.0k/s | 1.00x | 6.67x | 16.0k/s | 16.0k/s | 1.00x |",
    ]);
    assert.ok(
      lines.includes(
        `![Throughput per window against statements done, per runtime](${CHARTS.sustained})`,
      ),
    );
  });

  it("leaves the sustained load out for results written before the suite existed", () => {
    const r = buildReport(older);
    assert.ok(!r.markdown.includes("### Sustained load"));
    assert.ok(!r.markdown.includes(CHARTS.sustained));
    assert.equal(r.charts[CHARTS.sustained], undefined);
    assert.ok(r.markdown.includes("### Scaling") && r.markdown.includes("### Memory"));
    // One runtime with it and one without: a table for the one that has it.
    const mixed = buildReport([older[0], sample[1]]);
    const lines = section(mixed.markdown, "Sustained load");
    assert.ok(lines.includes("**Bun 1.4.5**") && !lines.includes("**Deno 2.9.6**"));
    assert.equal(elements(mixed.charts[CHARTS.sustained], /<g class="panel"/g).length, 1);
  });

  it("lists every micro-benchmark figure with medians, baselines and implied throughput", () => {
    const md = report.markdown;
    assert.ok(md.includes(
      "| checkout + release, warm, no query | postgres.js reserve()+release() (baseline) | 2.25 µs, p99 4.50 µs | 1.00 µs, p99 2.00 µs |",
    ));
    assert.ok(md.includes(
      "| SELECT 1 x1000, 100 callers, 10 connections | pgdbpool handler | 50.0 ms (20.0k/s), p99 100 ms | 60.0 ms (16.7k/s), p99 120 ms |",
    ));
    assert.ok(
      md.includes("| pgdbpool acquire() | Deno 2.9.6 | 10.0k/s | 5.00 ms | 11.0 ms | 12.0 ms |"),
    );
    for (const file of Object.values(CHARTS)) assert.ok(md.includes(`](${file})`), file);
    const moved = buildReport(sample, { chartDir: "results/" }).markdown;
    assert.ok(moved.includes("](results/checkout.svg)") && moved.includes("](results/http.svg)"));
  });

  it("says when the machine was busy or the run was a smoke run", () => {
    const busy = structuredClone(sample);
    busy[0].machine.loadavg_before = 1.8;
    busy[0].quick = true;
    const md = buildReport(busy).markdown;
    assert.match(
      md,
      /other work was running on the machine \(all\): these figures are noisy, not a real run/,
    );
    assert.match(md, /Smoke run \(`--quick`\)/);
  });

  it("judges each section by the load sampled while it ran", () => {
    const run = structuredClone(sample);
    for (const r of run) {
      r.load = { micro: { before: 0.3, max: 2.1 }, http: { before: 0.3, max: 4.2 } };
    }
    const md = buildReport(run).markdown;
    assert.match(
      md,
      /at the start of the run: 0\.30; highest while measuring: micro 2\.10, http 4\.20/,
    );
    assert.match(md, /other work was running on the machine \(http\)/);
    assert.match(buildReport(run).svg, /\(busy machine: noisy\)<\/text>/);
    for (const r of run) r.load!.http.max = 3.2;
    assert.match(buildReport(run).markdown, /— a quiet machine\./);
    assert.doesNotMatch(buildReport(run).svg, /busy machine/);
  });

  it("prefers the CPU other processes used over the load average", () => {
    const run = structuredClone(sample);
    for (const r of run) {
      r.load = {
        micro: { before: 0.3, max: 2.1, foreign_cpu: 0.004, foreign_cpu_max: 0.02 },
        // The benchmark alone keeps the load near 4 here: that is not other work.
        http: { before: 0.3, max: 4.2, foreign_cpu: 0.01, foreign_cpu_max: 0.03 },
      };
    }
    const md = buildReport(run).markdown;
    assert.match(md, /CPU used by other processes: micro 0\.4% \(worst 5 s: 2\.0%\), http 1\.0%/);
    assert.match(md, /— a quiet machine\./);
    for (const r of run) r.load!.micro.foreign_cpu = 0.2;
    assert.match(buildReport(run).markdown, /other work was running on the machine \(micro\)/);
  });

  it("draws a well-formed checkout chart with a log10 axis", () => {
    const svg = report.svg;
    assertWellFormed(svg);
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]* data-scale="log10"/);
    // Fastest figure 2 ns, slowest 3 µs: whole decades 1 ns .. 10 µs, evenly spaced.
    const ticks = elements(svg, /<line class="tick"[^>]*>/g);
    assert.deepEqual(ticks.map((t) => attr(t, "data-ns")), [1, 10, 100, 1000, 10000]);
    const xs = ticks.map((t) => attr(t, "x1"));
    const step = xs[1] - xs[0];
    assert.ok(step > 0);
    for (let k = 1; k < xs.length; k++) assert.ok(Math.abs(xs[k] - xs[k - 1] - step) < 0.2);
    // A bar ends where log10 of its value falls: 2.25 µs is 0.352 decades past 1 µs.
    const bars = elements(svg, /<rect class="bar"[^>]*>/g);
    assert.equal(bars.length, 11); // 5 entries x 2 runtimes, and one entry only Deno has
    const reserve = bars.find((b) =>
      b.includes('data-series="Deno 2.9.6"') && b.includes("reserve()")
    )!;
    const end = attr(reserve, "x") + attr(reserve, "width");
    assert.ok(Math.abs(end - (xs[3] + Math.log10(2.25) * step)) < 0.2, `bar ends at ${end}`);
    assert.ok(svg.includes(">1 µs</text>") && svg.includes(">10 ns</text>"));
  });

  it("draws the HTTP, scaling and memory charts", () => {
    for (const svg of Object.values(report.charts)) assertWellFormed(svg);
    const http = report.charts[CHARTS.http];
    // Linear from 0, with the target marked; one bar per cell and runtime.
    assert.match(http, /data-scale="linear"/);
    const mark = elements(http, /<line class="mark"[^>]*>/g).find((m) =>
      m.includes('data-value="0.97"')
    )!;
    const ticks = elements(http, /<line class="tick"[^>]*>/g);
    const [x0, x1] = [attr(ticks[0], "x1"), attr(ticks.at(-1)!, "x1")];
    const top = attr(ticks.at(-1)!, "data-value");
    assert.ok(Math.abs(attr(mark, "x1") - (x0 + (0.97 / top) * (x1 - x0))) < 0.2);
    assert.equal(elements(http, /<rect class="bar"[^>]*>/g).length, 8);
    // Scaling: per runtime a throughput and a p99 panel, a line per contender in each.
    const callers = report.charts[CHARTS.callers];
    assert.equal(elements(callers, /<g class="panel"/g).length, 4);
    assert.equal(elements(callers, /<polyline class="line"/g).length, 2 * 3 + 2 * 4);
    assert.match(report.charts[CHARTS.connections], /connection_count/);
    // Memory: heap and RSS per runtime, per client and kind; Bun SQL only on Bun.
    const memory = report.charts[CHARTS.memory];
    assert.equal(elements(memory, /<rect class="bar"[^>]*>/g).length, 2 * 2 * 2 + 3 * 2 * 2);
    assert.ok(memory.includes(">100 kB</text>"));
    // Sustained: a throughput panel per runtime, a line per contender, x linear from 0 in
    // statements done (windows end at 1100, 2100, 3100: axis to 4k).
    const aging = report.charts[CHARTS.sustained];
    assert.equal(elements(aging, /<g class="panel"/g).length, 2);
    assert.equal(elements(aging, /<polyline class="line"/g).length, 3 + 4);
    const dots = elements(aging, /<circle [^>]*data-x="[^"]*"[^>]*>/g);
    assert.deepEqual([...new Set(dots.map((d) => attr(d, "data-x")))], [1100, 2100, 3100]);
    for (const label of ["0", "800", "1.6k", "4k"]) {
      assert.ok(aging.includes(`>${label}</text>`), label);
    }
  });

  it("formats durations and sizes with 3 significant digits", () => {
    assert.equal(formatNs(5.6), "5.60 ns");
    assert.equal(formatNs(220.4), "220 ns");
    assert.equal(formatNs(1500), "1.50 µs");
    assert.equal(formatNs(40e6), "40.0 ms");
    assert.equal(formatNs(NaN), "n/a");
    assert.equal(formatBytes(153600), "154 kB");
    assert.equal(formatBytes(5120), "5.12 kB");
    assert.equal(formatBytes(-800), "-800 B");
    assert.equal(formatBytes(2.5e6), "2.50 MB");
  });
});

describe("bench HTTP apps", () => {
  it("reads wrk's requests/s, latency percentiles and errors", () => {
    const out = `Running 10s test @ http://127.0.0.1:8080/db
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.10ms    1.20ms  40.00ms   90.00%
    Req/Sec    20.10k     1.00k   22.00k    70.00%
  Latency Distribution
     50%    2.90ms
     75%    3.50ms
     90%    4.20ms
     99%  850.00us
  200000 requests in 10.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  19999.50
Transfer/sec:      3.00MB
`;
    const s = parseWrk(out);
    assert.equal(s.rps, 19999.5);
    assert.equal(s.p50_ns, 2.9e6);
    assert.equal(s.p99_ns, 850e3);
    assert.equal(s.requests, 200000);
    assert.equal(s.errors, 7);
    assert.throws(() => parseWrk("connection refused"), /unreadable/);
  });

  it("reads a process's CPU time from /proc, and shows it per request in the HTTP table", () => {
    const before = processCpuUs(process.pid)!;
    assert.ok(before > 0, `CPU time of this process: ${before}`);
    // Spin until /proc shows 150 ms more CPU time (on a loaded machine that takes longer than
    // 150 ms of wall time), or give up after 10 s.
    const started = performance.now();
    let x = 0;
    let after = before;
    while (after - before < 150_000 && performance.now() - started < 10_000) {
      for (let i = 0; i < 100_000; i++) x += Math.sqrt(x + 1);
      after = processCpuUs(process.pid)!;
    }
    assert.ok(after - before >= 150_000, `10 s of spinning took ${after - before} us of CPU`);
    assert.equal(processCpuUs(2 ** 30), undefined);
    // Results from before the column existed show a dash; recorded ones their mean.
    const dbRow = (md: string) =>
      md.split("\n").find((l) => l.startsWith("| Deno") && l.includes("`/db` | 64 |"))!;
    assert.match(dbRow(buildReport(sample).markdown), /\| — \| — \|$/);
    const withCpu: RuntimeResults[] = structuredClone(sample);
    for (const cell of withCpu[0].http!.cells) {
      cell.samples.forEach((s, i) => s.app_cpu_us = cell.variant === "pool" ? 100 + 20 * i : 90);
    }
    const line = dbRow(buildReport(withCpu).markdown);
    assert.match(line, /\| 110 µs \| 90\.0 µs \|$/);
  });

  it("reads the queries parameter as TechEmpower does", () => {
    const n = (q: string) => queryCount(new URL(`http://x/queries${q}`));
    assert.equal(n("?n=20"), 20);
    assert.equal(n("?queries=20"), 20);
    assert.equal(n(""), 1);
    assert.equal(n("?n=foo"), 1);
    assert.equal(n("?n=0"), 1);
    assert.equal(n("?n=501"), 500);
  });

  it("renders fortunes sorted, with the request-time one, every message escaped", () => {
    const html = renderFortunes([
      { id: 2, message: "b <i>" },
      { id: 1, message: `a "q" & 'r'` },
    ]);
    assert.equal(
      html,
      "<!DOCTYPE html><html><head><title>Fortunes</title></head><body><table>" +
        "<tr><th>id</th><th>message</th></tr>" +
        "<tr><td>0</td><td>Additional fortune added at request time.</td></tr>" +
        "<tr><td>1</td><td>a &quot;q&quot; &amp; &#x27;r&#x27;</td></tr>" +
        "<tr><td>2</td><td>b &lt;i&gt;</td></tr></table></body></html>",
    );
    assert.equal(escapeHtml("<script>"), "&lt;script&gt;");
  });

  it("sends batched updates sorted by id, so concurrent batches lock rows in one order", () => {
    assert.deepEqual(
      updateParams([{ id: 9, randomNumber: 1 }, { id: 3, randomNumber: 2 }]),
      ["{3,9}", "{2,1}"],
    );
  });
});

describe("bench report files", () => {
  it("writes report.md and the charts, and refreshes only the marked README section", () => {
    const dir = mkdtempSync(join(tmpdir(), "bench-report-test-"));
    try {
      writeFileSync(join(dir, "deno.json"), JSON.stringify(sample[0]));
      writeFileSync(join(dir, "bun.json"), JSON.stringify(sample[1]));
      const readme = join(dir, "README.md");
      writeFileSync(
        readme,
        "# Title\n\nQuoted: `<!-- bench-report:start -->` and `<!-- bench-report:end -->`.\n\n" +
          "<!-- bench-report:start -->\nold\n<!-- bench-report:end -->\n\n## After\n",
      );
      writeReport(dir, [{ path: readme, chartDir: "bench/results/", compact: true }]);
      assert.match(readFileSync(join(dir, "report.md"), "utf8"), /### All micro-benchmark figures/);
      for (const file of Object.values(CHARTS)) {
        assert.ok(existsSync(join(dir, file)), file);
        assert.match(readFileSync(join(dir, file), "utf8"), /^<svg /);
      }
      const text = readFileSync(readme, "utf8");
      assert.ok(
        text.startsWith(
          "# Title\n\nQuoted: `<!-- bench-report:start -->` and `<!-- bench-report:end -->`.\n\n" +
            "<!-- bench-report:start -->\nMeasured ",
        ),
      );
      assert.ok(text.endsWith("<!-- bench-report:end -->\n\n## After\n"));
      assert.ok(!text.includes("old\n"));
      assert.ok(text.includes("](bench/results/checkout.svg)"));
      assert.ok(text.includes("](bench/results/scaling-callers.svg)"));
      assert.ok(text.includes("### End-to-end HTTP") && text.includes("### Memory"));
      assert.ok(text.includes("### Sustained load"));
      assert.ok(text.includes("](bench/results/sustained.svg)"));
      assert.ok(!text.includes("### All micro-benchmark figures"), "compact: no detail tables");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

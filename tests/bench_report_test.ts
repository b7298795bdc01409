import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildReport, formatNs, type RuntimeResults, writeReport } from "../bench/report.ts";

// Two runtimes: Deno with two rounds (so ratios have a range), Bun with one.
const sample: RuntimeResults[] = JSON.parse(
  readFileSync(new URL("./fixtures/bench_sample.json", import.meta.url), "utf8"),
);

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

describe("bench report", () => {
  const report = buildReport(sample);

  it("evaluates each target per runtime from per-round ratios", () => {
    const deno = (id: string) =>
      report.targets.find((t) => t.id === id && t.runtime === "Deno 2.9.6")!;
    // Checkout: slowest pgdbpool entry (threaded) against reserve(): 1500/200 and 2000/250.
    assert.deepEqual(deno("checkout").rounds, [7.5, 8]);
    assert.equal(deno("checkout").ratio, 7.75);
    assert.equal(deno("checkout").pass, true);
    assert.equal(deno("seq").ratio, 0.9);
    assert.equal(deno("seq").pass, false);
    assert.equal(deno("c10").pass, true);
    assert.equal(deno("c100").ratio, 0.5);
    assert.equal(deno("tx").pass, true);
    // p99 waits: 10/10 and 12/10.
    assert.equal(deno("p99").ratio, 1.1);
    assert.equal(deno("p99").pass, false);
    assert.ok(report.targets.filter((t) => t.runtime === "Bun 1.4.5").every((t) => t.pass));
  });

  it("renders the targets table with ratio, range and verdict per runtime", () => {
    const md = report.markdown;
    assert.match(md, /Sample CPU @ 2\.0GHz \(2 cores/);
    assert.match(md, /Runtimes: Deno 2\.9\.6, Bun 1\.4\.5\./);
    assert.match(md, /\| target \| required \| Deno 2\.9\.6 \| Bun 1\.4\.5 \|/);
    const checkout = row(
      md,
      "warm checkout+release speed-up over postgres.js reserve()+release() (slowest pgdbpool entry)",
    );
    assert.match(
      checkout,
      /\| >= 5x \| 7\.75x \(7\.50x–8\.00x\) PASS \(slowest: pgdbpool threaded, primary\) \| 10\.0x PASS/,
    );
    assert.match(
      row(md, "SELECT 1 throughput vs raw postgres.js, sequential"),
      /0\.90x \(0\.80x–1\.00x\) FAIL/,
    );
    assert.match(
      row(md, "SELECT 1 throughput vs raw postgres.js, 100 callers"),
      /0\.50x FAIL \| 1\.00x PASS/,
    );
    assert.match(
      row(md, "transaction time vs postgres.js sql.begin()"),
      /\| <= 1\.00x \| 0\.67x PASS \| 0\.67x PASS \|/,
    );
    assert.match(
      row(md, "contention: p99 checkout wait vs pg-pool"),
      /1\.10x \(1\.00x–1\.20x\) FAIL \| 0\.90x PASS/,
    );
  });

  it("shows a third decimal when a ratio rounds to its limit", () => {
    const close: RuntimeResults = structuredClone(sample[1]);
    const key = Object.keys(close.extra).find((k) => k.endsWith(":: pgdbpool acquire()"))!;
    close.extra[key] = [{ ...close.extra[key][0], wait_p99_ns: 10.04e6 }]; // pg-pool: 10 ms
    const md = buildReport([close]).markdown;
    assert.match(row(md, "contention: p99 checkout wait vs pg-pool"), /\| 1\.004x FAIL \|/);
  });

  it("lists every figure with medians, baselines and implied throughput", () => {
    const md = report.markdown;
    assert.equal(
      row(md, "checkout + release, warm, no query").length > 0,
      true,
    );
    assert.ok(
      md.includes(
        "| checkout + release, warm, no query | postgres.js reserve()+release() (baseline) | 1.75 µs, p99 3.50 µs | 1.00 µs, p99 2.00 µs |",
      ),
    );
    // 1000 queries per 40 ms iteration.
    assert.ok(
      md.includes(
        "| SELECT 1 x1000, 10 callers, 10 connections | pgdbpool handler | 40.0 ms (25.0k/s), p99 80.0 ms |",
      ),
    );
    assert.ok(
      md.includes("| pgdbpool acquire() | Deno 2.9.6 | 10.0k/s | 5.00 ms | 11.0 ms | 12.0 ms |"),
    );
    assert.ok(md.includes("](checkout.svg)"));
    assert.ok(
      buildReport(sample, { chartPath: "results/checkout.svg" }).markdown.includes(
        "](results/checkout.svg)",
      ),
    );
  });

  it("draws a well-formed SVG with a log10 axis", () => {
    const svg = report.svg;
    assertWellFormed(svg);
    assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]* data-scale="log10"/);
    // Fastest figure 4 ns, slowest 3 µs: whole decades 1 ns .. 10 µs, evenly spaced.
    const ticks = [...svg.matchAll(/<line class="tick"[^>]*>/g)].map((m) => m[0]);
    assert.deepEqual(ticks.map((t) => attr(t, "data-ns")), [1, 10, 100, 1000, 10000]);
    const xs = ticks.map((t) => attr(t, "x1"));
    const step = xs[1] - xs[0];
    assert.ok(step > 0);
    for (let k = 1; k < xs.length; k++) assert.ok(Math.abs(xs[k] - xs[k - 1] - step) < 0.2);
    // A bar ends where log10 of its value falls between the ticks: 1.75 µs is 0.243 decades past 1 µs.
    const bars = [...svg.matchAll(/<rect class="bar"[^>]*>/g)].map((m) => m[0]);
    assert.equal(bars.length, 10); // 5 pools x 2 runtimes
    const reserve = bars.find((b) =>
      b.includes('data-runtime="Deno 2.9.6"') && b.includes("reserve()")
    )!;
    const end = attr(reserve, "x") + attr(reserve, "width");
    assert.ok(Math.abs(end - (xs[3] + Math.log10(1.75) * step)) < 0.2, `bar ends at ${end}`);
    assert.ok(svg.includes(">1 µs</text>") && svg.includes(">10 ns</text>"));
  });

  it("formats durations with 3 significant digits", () => {
    assert.equal(formatNs(5.6), "5.60 ns");
    assert.equal(formatNs(220.4), "220 ns");
    assert.equal(formatNs(1500), "1.50 µs");
    assert.equal(formatNs(40e6), "40.0 ms");
    assert.equal(formatNs(NaN), "n/a");
  });
});

describe("bench report files", () => {
  it("writes report.md and checkout.svg and refreshes only the marked README section", () => {
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
      writeReport(dir, [{ path: readme, chartPath: "bench/results/checkout.svg", compact: true }]);
      assert.match(readFileSync(join(dir, "report.md"), "utf8"), /### All figures/);
      assert.match(readFileSync(join(dir, "checkout.svg"), "utf8"), /^<svg /);
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
      assert.ok(!text.includes("### All figures"), "compact section has no detail tables");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

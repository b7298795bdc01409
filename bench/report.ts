/**
 * Turns bench/results/<runtime>.json into a markdown report (targets with pass/fail, every
 * figure, contention waits) and an SVG chart of checkout latency per pool and runtime on a log
 * scale. `buildReport` is pure; `writeReport` does the file I/O, and running this file
 * (`deno run -A bench/report.ts`) calls it.
 *
 * Every ratio is computed per round from two benches that ran side by side, then the median
 * over rounds is reported with the range.
 *
 * @module
 */

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { BATCH, extraKey, GROUP, NAME, OURS } from "./names.ts";

/** Statistics of one bench in one round, in ns per iteration (`deno bench --json`'s shape). */
export interface Stats {
  n: number;
  min: number;
  max: number;
  avg: number;
  p75: number;
  p99: number;
}

/** One bench; `results` holds one entry per round. */
export interface BenchEntry {
  group?: string;
  name: string;
  baseline: boolean;
  results: Array<{ ok: Stats }>;
}

/** The machine a run happened on. */
export interface Machine {
  cpu: string;
  cores: number;
  os: string;
  memory_gb: number;
  /** 1-minute load average when the run started and ended: other load skews every figure. */
  loadavg_before: number;
  loadavg_after: number;
}

/** The content of bench/results/<runtime>.json. */
export interface RuntimeResults {
  runtime: { name: string; version: string };
  machine: Machine;
  /** ISO 8601 start of the run. */
  date: string;
  rounds: number;
  /** PostgreSQL and library versions. */
  versions: Record<string, string>;
  benches: BenchEntry[];
  /** Figures deno bench has no field for (contention waits), keyed by `extraKey`, per round. */
  extra: Record<string, Array<Record<string, number>>>;
}

/** One target of the issue, evaluated for one runtime. */
export interface TargetCheck {
  /** Stable identifier: checkout, seq, c10, c100, q10, q100, tx, p99. */
  id: string;
  runtime: string;
  /** Median over rounds of the per-round ratio; NaN when a bench is missing. */
  ratio: number;
  /** Per-round ratios. */
  rounds: number[];
  pass: boolean;
  /** Extra context, e.g. which pgdbpool entry was slowest. */
  note?: string;
}

/** What `buildReport` produces. */
export interface Report {
  markdown: string;
  svg: string;
  targets: TargetCheck[];
}

/** Options of `buildReport`. */
export interface ReportOptions {
  /** Where the markdown links the chart; default `checkout.svg` (next to report.md). */
  chartPath?: string;
  /** Only the header, the targets and the chart (for the project README). */
  compact?: boolean;
}

interface TargetSpec {
  id: string;
  label: string;
  required: string;
  /** `>=`: higher is better. */
  better: "higher" | "lower";
  limit: number;
}

const TARGETS: TargetSpec[] = [
  {
    id: "checkout",
    label:
      "warm checkout+release speed-up over postgres.js reserve()+release() (slowest pgdbpool entry)",
    required: ">= 5x",
    better: "higher",
    limit: 5,
  },
  {
    id: "seq",
    label: "SELECT 1 throughput vs raw postgres.js, sequential",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "c10",
    label: "SELECT 1 throughput vs raw postgres.js, 10 callers",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "c100",
    label: "SELECT 1 throughput vs raw postgres.js, 100 callers",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "q10",
    label: "SELECT 1 throughput via pool.query vs raw postgres.js, 10 callers",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "q100",
    label: "SELECT 1 throughput via pool.query (pipelined) vs raw postgres.js, 100 callers",
    required: ">= 0.97x",
    better: "higher",
    limit: 0.97,
  },
  {
    id: "tx",
    label: "transaction time vs postgres.js sql.begin()",
    required: "<= 1.00x",
    better: "lower",
    limit: 1,
  },
  {
    id: "p99",
    label: "contention: p99 checkout wait vs pg-pool",
    required: "<= 1.00x",
    better: "lower",
    limit: 1,
  },
];

// ---------------------------------------------------------------------------------------------
// Numbers.

function median(xs: readonly number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function find(r: RuntimeResults, group: string, name: string): BenchEntry | undefined {
  return r.benches.find((b) => b.group === group && b.name === name);
}

/** Per-round avg of a bench, or [] when it is missing. */
function avgs(b: BenchEntry | undefined): number[] {
  return b?.results.map((x) => x.ok.avg) ?? [];
}

/** Per-round `num / den`, pairing rounds by index (they ran side by side). */
function perRound(num: readonly number[], den: readonly number[]): number[] {
  const n = Math.min(num.length, den.length);
  return Array.from({ length: n }, (_, i) => num[i] / den[i]);
}

function check(spec: TargetSpec, runtime: string, rounds: number[], note?: string): TargetCheck {
  const ratio = median(rounds);
  const pass = Number.isFinite(ratio) &&
    (spec.better === "higher" ? ratio >= spec.limit : ratio <= spec.limit);
  return { id: spec.id, runtime, ratio, rounds, pass, note };
}

/** Evaluates every target for one runtime's results. */
export function evaluateTargets(r: RuntimeResults): TargetCheck[] {
  const rt = runtimeLabel(r);
  const spec = (id: string) => TARGETS.find((t) => t.id === id)!;
  const out: TargetCheck[] = [];

  // Checkout: the slowest pgdbpool entry decides.
  const reserve = avgs(find(r, GROUP.checkout, NAME.reserve));
  let worst: { name: string; rounds: number[] } | undefined;
  for (const b of r.benches) {
    if (b.group !== GROUP.checkout || !b.name.startsWith(OURS)) continue;
    const rounds = perRound(reserve, avgs(b));
    if (worst === undefined || !(median(rounds) >= median(worst.rounds))) {
      worst = { name: b.name, rounds };
    }
  }
  out.push(check(spec("checkout"), rt, worst?.rounds ?? [], worst && `slowest: ${worst.name}`));

  // Throughput ratio = raw time / handler time.
  for (const [id, group] of [["seq", GROUP.seq], ["c10", GROUP.c10], ["c100", GROUP.c100]]) {
    const rounds = perRound(avgs(find(r, group, NAME.raw)), avgs(find(r, group, NAME.handler)));
    out.push(check(spec(id), rt, rounds));
  }
  for (const [id, group] of [["q10", GROUP.c10], ["q100", GROUP.c100]]) {
    const oneShot = find(r, group, NAME.oneShot);
    if (oneShot === undefined) continue; // results from before pool.query was measured
    out.push(check(spec(id), rt, perRound(avgs(find(r, group, NAME.raw)), avgs(oneShot))));
  }

  out.push(check(
    spec("tx"),
    rt,
    perRound(avgs(find(r, GROUP.tx, NAME.handler)), avgs(find(r, GROUP.tx, NAME.begin))),
  ));

  const p99 = (name: string) =>
    (r.extra[extraKey(GROUP.contention, name)] ?? []).map((x) => x.wait_p99_ns);
  out.push(check(spec("p99"), rt, perRound(p99(NAME.contentionOurs), p99(NAME.contentionPg))));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Formatting.

/** A duration in ns, with a unit that keeps 3 significant digits. */
export function formatNs(ns: number): string {
  if (!Number.isFinite(ns)) return "n/a";
  const units: Array<[number, string]> = [[1e9, "s"], [1e6, "ms"], [1e3, "µs"], [1, "ns"]];
  for (const [scale, unit] of units) {
    if (ns >= scale || scale === 1) {
      const v = ns / scale;
      return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${unit}`;
    }
  }
  return `${ns} ns`;
}

function formatRate(perSecond: number): string {
  if (!Number.isFinite(perSecond)) return "n/a";
  return perSecond >= 1000 ? `${(perSecond / 1000).toFixed(1)}k/s` : `${perSecond.toFixed(0)}/s`;
}

function formatRatio(x: number): string {
  return Number.isFinite(x) ? `${x >= 10 ? x.toFixed(1) : x.toFixed(2)}x` : "n/a";
}

function runtimeLabel(r: RuntimeResults): string {
  const name = r.runtime.name.charAt(0).toUpperCase() + r.runtime.name.slice(1);
  return `${name} ${r.runtime.version}`;
}

/** Escapes text for markdown table cells. */
function cell(text: string): string {
  return text.replaceAll("|", "\\|");
}

function targetCell(t: TargetCheck | undefined, limit: number): string {
  if (t === undefined || !Number.isFinite(t.ratio)) return "n/a FAIL";
  const finite = t.rounds.filter(Number.isFinite);
  const [lo, hi] = [formatRatio(Math.min(...finite)), formatRatio(Math.max(...finite))];
  const range = lo === hi ? "" : ` (${lo}–${hi})`;
  // A ratio that rounds to the limit gets a third decimal, so the verdict is visible in it.
  const shown = formatRatio(t.ratio) === formatRatio(limit)
    ? `${t.ratio.toFixed(3)}x`
    : formatRatio(t.ratio);
  return `${shown}${range} ${t.pass ? "PASS" : "FAIL"}`;
}

function header(results: RuntimeResults[]): string[] {
  const first = results[0];
  const m = first.machine;
  const versions = Object.entries(first.versions).map(([k, v]) => `${k} ${v}`).join(", ");
  return [
    `Measured ${first.date.slice(0, 16).replace("T", " ")} UTC on ${m.cpu} (${m.cores} cores, ` +
    `${m.memory_gb} GB, ${m.os}).`,
    "",
    `Runtimes: ${results.map(runtimeLabel).join(", ")}. ${versions}.`,
    "",
    `Median of ${first.rounds} round(s); a round runs each runtime's whole suite in turn against ` +
    `one local primary + streaming replica. Ratios are taken per round between benches that ran ` +
    `side by side, then the median (range) is shown. Load average (1 min) before the run: ` +
    `${m.loadavg_before.toFixed(2)}, after: ${m.loadavg_after.toFixed(2)} (includes the ` +
    `benchmark's own load, about ${m.cores} here at most)` +
    (m.loadavg_before > m.cores / 2 || m.loadavg_after > 1.5 * m.cores
      ? ` — **other work was running on the machine: treat figures as noisy**.`
      : "."),
  ];
}

function targetsTable(results: RuntimeResults[], checks: TargetCheck[]): string[] {
  const lines = [
    `| target | required | ${results.map(runtimeLabel).join(" | ")} |`,
    `|---|---|${results.map(() => "---|").join("")}`,
  ];
  for (const spec of TARGETS) {
    const cells = results.map((r) => {
      const t = checks.find((c) => c.id === spec.id && c.runtime === runtimeLabel(r));
      return cell(targetCell(t, spec.limit) + (t?.note ? ` (${t.note})` : ""));
    });
    lines.push(`| ${cell(spec.label)} | ${spec.required} | ${cells.join(" | ")} |`);
  }
  return lines;
}

/** Groups in first-seen order, each with its bench names in first-seen order. */
function layout(results: RuntimeResults[]): Array<[string, string[]]> {
  const groups = new Map<string, string[]>();
  for (const r of results) {
    for (const b of r.benches) {
      const g = b.group ?? "";
      const names = groups.get(g) ?? [];
      if (!names.includes(b.name)) names.push(b.name);
      groups.set(g, names);
    }
  }
  return [...groups.entries()];
}

function figureCell(r: RuntimeResults, group: string, name: string): string {
  const b = find(r, group, name);
  if (b === undefined) return "n/a";
  const avg = median(avgs(b));
  const p99 = median(b.results.map((x) => x.ok.p99));
  const batch = BATCH[group];
  const rate = batch === undefined ? "" : ` (${formatRate(batch / (avg / 1e9))})`;
  return `${formatNs(avg)}${rate}, p99 ${formatNs(p99)}`;
}

function allTable(results: RuntimeResults[]): string[] {
  const lines = [
    `| group | benchmark | ${results.map(runtimeLabel).join(" | ")} |`,
    `|---|---|${results.map(() => "---|").join("")}`,
  ];
  for (const [group, names] of layout(results)) {
    for (const name of names) {
      const baseline = results.some((r) => find(r, group, name)?.baseline) ? " (baseline)" : "";
      const cells = results.map((r) => figureCell(r, group, name));
      lines.push(`| ${cell(group)} | ${cell(name + baseline)} | ${cells.join(" | ")} |`);
    }
  }
  return lines;
}

function waitsTable(results: RuntimeResults[]): string[] {
  const lines = [
    "| pool | runtime | checkouts/s | p50 wait | p99 wait | max wait |",
    "|---|---|---|---|---|---|",
  ];
  for (const name of [NAME.contentionOurs, NAME.contentionPg]) {
    for (const r of results) {
      const x = r.extra[extraKey(GROUP.contention, name)] ?? [];
      const avg = median(avgs(find(r, GROUP.contention, name)));
      const rate = formatRate(BATCH[GROUP.contention] / (avg / 1e9));
      const w = (k: string) => formatNs(median(x.map((v) => v[k])));
      lines.push(
        `| ${name} | ${runtimeLabel(r)} | ${rate} | ${w("wait_p50_ns")} | ${w("wait_p99_ns")} | ${
          w("wait_max_ns")
        } |`,
      );
    }
  }
  return lines;
}

// ---------------------------------------------------------------------------------------------
// Chart.

const COLORS = ["#3b6fd8", "#e8a33d", "#4aa564", "#b45bc7"];

function xml(text: string): string {
  return text.replaceAll("&", "&amp;").replaceAll("<", "&lt;").replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

const DECADE_LABEL: Record<number, string> = {
  0: "1 ns",
  1: "10 ns",
  2: "100 ns",
  3: "1 µs",
  4: "10 µs",
  5: "100 µs",
  6: "1 ms",
  7: "10 ms",
  8: "100 ms",
  9: "1 s",
};

/**
 * Horizontal grouped bars of the checkout group: one row per pool, one bar per runtime, on a
 * log10 axis spanning whole decades. Bars start at the axis' left edge (the decade below the
 * fastest figure), so lengths compare as orders of magnitude.
 */
export function renderChart(results: RuntimeResults[]): string {
  const names = layout(results).find(([g]) => g === GROUP.checkout)?.[1] ?? [];
  const values = results.map((r) => names.map((n) => median(avgs(find(r, GROUP.checkout, n)))));
  const finite = values.flat().filter((v) => Number.isFinite(v) && v > 0);
  const lo = Math.floor(Math.log10(finite.length ? Math.min(...finite) : 1));
  const hi = Math.max(lo + 1, Math.ceil(Math.log10(finite.length ? Math.max(...finite) : 10)));

  const labelW = 290, plotW = 420, right = 80, top = 58, barH = 11, gap = 10;
  const rowH = results.length * barH + gap;
  const width = labelW + plotW + right;
  const plotH = names.length * rowH;
  const height = top + plotH + 62;
  const x = (ns: number) => labelW + ((Math.log10(ns) - lo) / (hi - lo)) * plotW;
  const f = (n: number) => n.toFixed(1);

  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" ` +
      `viewBox="0 0 ${width} ${height}" font-family="system-ui, sans-serif" font-size="12" ` +
      `data-scale="log10" data-decades="${lo}-${hi}">`,
  );
  out.push(`<rect width="${width}" height="${height}" fill="#ffffff"/>`);
  out.push(
    `<text x="${labelW}" y="20" font-size="14" font-weight="bold">` +
      `${xml("Checkout + release, warm pool, no query")}</text>`,
  );
  out.push(
    `<text x="${labelW}" y="37" fill="#555">${
      xml("time per checkout, log scale, lower is better")
    }</text>`,
  );
  for (let d = lo; d <= hi; d++) {
    const tx = f(x(10 ** d));
    out.push(
      `<line class="tick" data-ns="${10 ** d}" x1="${tx}" y1="${top - 6}" x2="${tx}" ` +
        `y2="${top + plotH}" stroke="#ddd"/>`,
    );
    out.push(
      `<text x="${tx}" y="${top + plotH + 16}" text-anchor="middle" fill="#555">` +
        `${xml(DECADE_LABEL[d] ?? `1e${d} ns`)}</text>`,
    );
  }
  names.forEach((name, row) => {
    const y0 = top + row * rowH;
    out.push(
      `<text x="${labelW - 8}" y="${f(y0 + (results.length * barH) / 2 + 4)}" ` +
        `text-anchor="end">${xml(name)}</text>`,
    );
    results.forEach((r, k) => {
      const v = values[k][row];
      if (!(Number.isFinite(v) && v > 0)) return;
      const y = y0 + k * barH;
      out.push(
        `<rect class="bar" data-runtime="${xml(runtimeLabel(r))}" data-name="${xml(name)}" ` +
          `data-ns="${v}" x="${labelW}" y="${y}" width="${f(x(v) - labelW)}" ` +
          `height="${barH - 1}" fill="${COLORS[k % COLORS.length]}"/>`,
      );
      out.push(
        `<text x="${f(x(v) + 4)}" y="${y + barH - 2}" font-size="10" fill="#333">` +
          `${xml(formatNs(v))}</text>`,
      );
    });
  });
  const ly = top + plotH + 36;
  results.forEach((r, k) => {
    const lx = labelW + k * 130;
    out.push(
      `<rect x="${lx}" y="${ly - 9}" width="10" height="10" fill="${COLORS[k % COLORS.length]}"/>`,
    );
    out.push(`<text x="${lx + 14}" y="${ly}">${xml(runtimeLabel(r))}</text>`);
  });
  const m = results[0]?.machine;
  if (m) {
    out.push(
      `<text x="${labelW}" y="${ly + 18}" font-size="10" fill="#777">${
        xml(`${m.cpu}, ${m.cores} cores; ${results[0].date.slice(0, 10)}`)
      }</text>`,
    );
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}

// ---------------------------------------------------------------------------------------------
// The report.

/** Builds the markdown report, the chart and the target checks from each runtime's results. */
export function buildReport(results: RuntimeResults[], options: ReportOptions = {}): Report {
  if (results.length === 0) throw new Error("buildReport: no results");
  const targets = results.flatMap(evaluateTargets);
  const chartPath = options.chartPath ?? "checkout.svg";
  const summary = [
    ...header(results),
    "",
    "### Targets",
    "",
    ...targetsTable(results, targets),
    "",
    "Checkout baseline: postgres.js `reserve()` on a fresh, warmed client, its best case: " +
    "`reserve()` slows down as a client ages (see the fairness notes in bench/README.md). " +
    "Throughput ratios are raw time / handler time at 10 connections each. Transaction: wall " +
    "time per transaction (pgdbpool pipelines BEGIN with the statement: 2 round trips; " +
    "`sql.begin()` takes 3).",
    "",
    `![Checkout + release latency per pool and runtime, log scale](${chartPath})`,
    "",
  ];
  const details = [
    "### All figures",
    "",
    "Time per iteration (median over rounds of the runner's average); batch groups show the " +
    "throughput it implies. p99 is the runner's: for fast benches it is taken over batches of " +
    "iterations, not single calls.",
    "",
    ...allTable(results),
    "",
    "### Contention: checkout waits",
    "",
    "Wait from asking for a connection to holding it, 200 tasks over 10 connections (medians " +
    "over rounds).",
    "",
    ...waitsTable(results),
    "",
  ];
  const md = options.compact ? summary : [...summary, ...details];
  return { markdown: md.join("\n"), svg: renderChart(results), targets };
}

const START = "<!-- bench-report:start -->";
const END = "<!-- bench-report:end -->";

/** A markdown file with a generated section between the bench-report markers. */
export interface ReadmeTarget {
  path: string;
  /** Chart link relative to that file. */
  chartPath: string;
  compact: boolean;
}

/**
 * Reads `deno.json` / `bun.json` from `dir` (whichever exist), writes `report.md` and
 * `checkout.svg` there, and refreshes the generated section of each readme that has the
 * markers (`<!-- bench-report:start -->` ... `<!-- bench-report:end -->`). By default: the
 * full report in bench/README.md, a compact one in the project README if it opts in.
 */
export function writeReport(dir: string, readmes: ReadmeTarget[] = defaultReadmes(dir)): Report {
  const results: RuntimeResults[] = [];
  for (const runtime of ["deno", "bun"]) {
    const file = join(dir, `${runtime}.json`);
    if (existsSync(file)) results.push(JSON.parse(readFileSync(file, "utf8")));
  }
  const report = buildReport(results);
  writeFileSync(join(dir, "report.md"), report.markdown);
  writeFileSync(join(dir, "checkout.svg"), report.svg);
  for (const readme of readmes) {
    if (!existsSync(readme.path)) continue;
    const text = readFileSync(readme.path, "utf8");
    const a = markerLine(text, START, 0);
    const b = markerLine(text, END, a + 1);
    if (a === -1 || b === -1) continue;
    const section = buildReport(results, readme).markdown;
    writeFileSync(readme.path, `${text.slice(0, a + START.length)}\n${section}\n${text.slice(b)}`);
  }
  return report;
}

/** Index of `marker` standing alone on a line (so prose may quote it), or -1. */
function markerLine(text: string, marker: string, from: number): number {
  for (let i = text.indexOf(marker, from); i !== -1; i = text.indexOf(marker, i + 1)) {
    const end = i + marker.length;
    if ((i === 0 || text[i - 1] === "\n") && (end === text.length || text[end] === "\n")) return i;
  }
  return -1;
}

function defaultReadmes(dir: string): ReadmeTarget[] {
  const bench = dirname(dir);
  return [
    { path: join(bench, "README.md"), chartPath: "results/checkout.svg", compact: false },
    {
      path: join(dirname(bench), "README.md"),
      chartPath: "bench/results/checkout.svg",
      compact: true,
    },
  ];
}

if (import.meta.main) {
  const dir = join(dirname(fileURLToPath(import.meta.url)), "results");
  console.log(writeReport(dir).markdown);
}

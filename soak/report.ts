// The soak's end-of-run table (plain text) and its JSON file.
import { writeFileSync } from "node:fs";
import type { SoakReport } from "./run.ts";

function table(head: string[], rows: Array<Array<string | number>>): string {
  const cells = [head, ...rows.map((r) => r.map((c) => String(c)))];
  const widths = head.map((_, i) => Math.max(...cells.map((r) => (r[i] ?? "").length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ").trimEnd();
  return [line(head), widths.map((w) => "-".repeat(w)).join("  "), ...cells.slice(1).map(line)]
    .join("\n");
}

const fmt = (ms: number) => Number.isFinite(ms) ? ms.toFixed(1) : "-";

/** The report as text tables: operations, faults, errors, writes, violations. */
export function formatReport(r: SoakReport): string {
  const out: string[] = [];
  out.push(
    `=== soak: ${r.runtime}, PostgreSQL ${r.postgres}, ${r.seconds} s, ${r.workers} workers, ` +
      `seed ${r.seed} (wall ${r.wall_s} s) ===`,
  );
  out.push("");
  out.push(table(
    ["operation", "started", "ok", "failed", "hung", "p50 ms", "p99 ms", "max ms"],
    Object.entries(r.ops).map(([k, o]) => [
      k,
      o.started,
      o.ok,
      o.failed,
      o.hung,
      fmt(o.p50_ms),
      fmt(o.p99_ms),
      fmt(o.max_ms),
    ]),
  ));
  out.push("");
  out.push(table(["fault", "count"], Object.entries(r.faults)));
  out.push("");
  const errors = Object.entries(r.errors);
  out.push(errors.length ? table(["error", "count"], errors) : "errors: none");
  out.push("");
  if (r.writes) {
    const w = r.writes;
    out.push(
      `writes: ${w.issued} issued, ${w.rows} rows on the final primary; ${w.acked} acknowledged, ` +
        `${w.failed_absent} failed (must be absent), ${w.unknown} unknown outcome ` +
        `(${w.unknown_present} present, ${w.unknown_absent} absent)`,
    );
  }
  const ryw = Object.entries(r.ryw_checks).map(([k, n]) => `${k} ${n}`).join(", ");
  out.push(`read-your-writes checks: ${ryw || "none"}`);
  const h = r.heap;
  out.push(
    `heap: ${h.baseline_mb ?? "-"} MB after warm-up, ${h.end_mb ?? "-"} MB at the end` +
      `${h.forced_gc ? " (after forced GC)" : " (window minimum, no forced GC)"}; ` +
      `worst event-loop stall ${r.event_loop_worst_stall_ms} ms; ` +
      `pool sessions after close: ${r.connections_after_close ?? "-"}`,
  );
  const open = Object.entries(r.max_open).map(([g, o]) => `${g} ${o.open}/${o.size}`);
  out.push(`most connections open at once (group open/size): ${open.join(", ") || "-"}`);
  out.push("");
  if (r.violations.length === 0) out.push("violations: none");
  else {
    out.push(`VIOLATIONS (${r.violations.reduce((s, v) => s + v.count, 0)}):`);
    for (const v of r.violations) {
      out.push(`  ${v.kind}: ${v.count}`);
      for (const e of v.examples) out.push(`    - ${e}`);
    }
  }
  if (r.soak_errors.length > 0) {
    out.push("SOAK ERRORS (not pool violations; the run is not valid):");
    for (const e of r.soak_errors) out.push(`  - ${e}`);
  }
  out.push(r.ok ? "RESULT: PASS" : "RESULT: FAIL");
  return out.join("\n");
}

/** Writes the report (or several, keyed by runtime) as JSON. */
export function writeJson(file: string, data: unknown): void {
  writeFileSync(file, JSON.stringify(data, null, 2) + "\n");
}

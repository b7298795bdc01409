// Command line of one soak run under the current runtime (Deno or Bun):
//
//   deno run -A soak/main.ts --seconds 60 [--workers 24] [--seed N] [--json out.json]
//   bun soak/main.ts --minutes 5
//
// Prints the report table; exits 0 when there was no violation, 1 on violations, 2 when the
// soak itself could not run or restore a fault. `npm run soak` runs it under both runtimes.
import process from "node:process";
import { formatReport, writeJson } from "./report.ts";
import { runSoak } from "./run.ts";

function parse(argv: string[]): {
  seconds: number;
  workers?: number;
  seed?: number;
  json?: string;
  thinkMs?: number;
} {
  const out: { seconds: number; workers?: number; seed?: number; json?: string; thinkMs?: number } =
    { seconds: 60 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    const num = () => {
      const n = Number(value);
      if (value === undefined || !Number.isFinite(n) || n < 0) {
        throw new Error(`${flag} needs a non-negative number (got ${value})`);
      }
      i++;
      return n;
    };
    switch (flag) {
      case "--seconds":
        out.seconds = num();
        break;
      case "--minutes":
        out.seconds = num() * 60;
        break;
      case "--workers":
        out.workers = Math.max(1, Math.trunc(num()));
        break;
      case "--seed":
        out.seed = Math.trunc(num()) >>> 0;
        break;
      case "--think-ms":
        out.thinkMs = num();
        break;
      case "--json":
        if (value === undefined) throw new Error("--json needs a file name");
        out.json = value;
        i++;
        break;
      default:
        throw new Error(`unknown argument ${flag}`);
    }
  }
  if (out.seconds < 20) throw new Error("a soak needs at least 20 seconds");
  return out;
}

let args;
try {
  args = parse(process.argv.slice(2));
} catch (err) {
  console.error(err instanceof Error ? err.message : String(err));
  process.exit(2);
}
const report = await runSoak(args);
console.log(formatReport(report));
if (args.json) writeJson(args.json, report);
process.exit(report.soak_errors.length > 0 ? 2 : report.violations.length > 0 ? 1 : 0);

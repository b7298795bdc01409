// The driver's reading of a server's last words: the SQLSTATE of a FATAL ErrorResponse that
// ends the bytes received. Built from protocol messages, byte by byte.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { trailingFatal } from "../src/driver/postgres.ts";
import { unrunWhenTerminated } from "../src/driver/termination.ts";

const text = new TextEncoder();

function message(type: string, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(5 + body.length);
  out[0] = type.charCodeAt(0);
  new DataView(out.buffer).setUint32(1, 4 + body.length);
  out.set(body, 5);
  return out;
}

function errorResponse(severity: string, code: string): Uint8Array {
  const fields = [`S${severity}`, `V${severity}`, `C${code}`, "Mterminating connection"];
  return message("E", text.encode(fields.map((f) => f + "\0").join("") + "\0"));
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

const dataRow = message("D", new Uint8Array([0, 1, 0, 0, 0, 1, 0x45])); // one column "E"
const readyForQuery = message("Z", text.encode("I"));

describe("trailingFatal", () => {
  it("reads the SQLSTATE of a FATAL that ends the bytes", () => {
    assert.equal(trailingFatal(errorResponse("FATAL", "57P01")), "57P01");
    assert.equal(
      trailingFatal(concat(dataRow, readyForQuery, errorResponse("FATAL", "57P03"))),
      "57P03",
    );
  });

  it("ignores an ERROR, a FATAL that is not last, and bytes with no message boundary", () => {
    assert.equal(trailingFatal(errorResponse("ERROR", "22012")), undefined);
    assert.equal(trailingFatal(concat(errorResponse("FATAL", "57P01"), readyForQuery)), undefined);
    assert.equal(trailingFatal(concat(dataRow, readyForQuery)), undefined);
    assert.equal(trailingFatal(new Uint8Array([0x45, 0, 0, 0])), undefined);
    assert.equal(trailingFatal(new Uint8Array(0)), undefined);
  });

  it("finds it when the chunk begins in the middle of an earlier message", () => {
    const whole = concat(dataRow, errorResponse("FATAL", "57P01"));
    assert.equal(trailingFatal(whole.subarray(3)), "57P01");
  });
});

describe("unrunWhenTerminated", () => {
  it("a terminated single query, DML or session statement never ran", () => {
    for (
      const text of [
        "SELECT pg_sleep(1)",
        "  -- why\n/* note */ ( select 1 )",
        "INSERT INTO t VALUES ($1);",
        "with x as (delete from t returning *) select * from x ;; ",
        "UPDATE t SET v = 1",
        "BEGIN ISOLATION LEVEL SERIALIZABLE",
        "ROLLBACK",
        "ROLLBACK TO SAVEPOINT a",
        "SET application_name = 'x'",
      ]
    ) {
      assert.equal(unrunWhenTerminated("57P01", text), true, text);
    }
    assert.equal(unrunWhenTerminated("57P03", "SELECT 1"), true);
  });

  it("a text that may commit before its acknowledgement is unknown", () => {
    for (
      const text of [
        "COMMIT",
        "end",
        "COMMIT PREPARED 'a'",
        "ROLLBACK PREPARED 'a'",
        "PREPARE TRANSACTION 'a'",
        "BEGIN; INSERT INTO t VALUES (1); COMMIT; SELECT pg_sleep(30)",
        "SELECT 1; SELECT 2",
        "SELECT ';'", // a literal's semicolon errs towards unknown
        "CALL proc()",
        "DO $$ BEGIN COMMIT; END $$",
        "CREATE DATABASE x",
        "VACUUM t",
        "/* never closed",
        "-- only a comment",
        "",
      ]
    ) {
      assert.equal(unrunWhenTerminated("57P01", text), false, text);
    }
  });

  it("only a terminating FATAL proves anything", () => {
    for (const code of ["57P02", "08006", "XX000", undefined]) {
      assert.equal(unrunWhenTerminated(code, "SELECT 1"), false, String(code));
    }
  });
});

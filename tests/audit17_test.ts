// Defects found by audit 17 (Bun driver under faults, routing faults, config errors), each proven
// against real servers where a server is involved.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { ConfigError, Pool } from "../mod.ts";

await setTestTimeout(180_000);

let cluster: PgCluster;

before(async () => {
  cluster = await startCluster({ replicas: 1 });
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

const SECRET = "s3cr3t-audit17";

/** The ConfigError `new Pool(config)` throws; never one that shows the password. */
function configError(config: unknown): ConfigError {
  try {
    new Pool(config as ConstructorParameters<typeof Pool>[0]);
  } catch (err) {
    assert.ok(err instanceof ConfigError, `a ConfigError, got ${err}`);
    assert.ok(!err.message.includes(SECRET), `no password in ${err.message}`);
    return err;
  }
  assert.fail("the config was accepted");
}

const groups = { g: { connection_count: 1 } };

describe("config: URL parameters are read as written, or refused", () => {
  it("?prepare= takes only true or false (0 and no used to mean prepare)", () => {
    for (const value of ["0", "no", "off", "False", ""]) {
      const err = configError({
        db: `postgres://app:${SECRET}@db.example/app?prepare=${value}`,
        groups,
      });
      assert.match(err.message, /prepare/);
      assert.ok(err.message.includes(JSON.stringify(value)), err.message);
    }
  });
  it("a number parameter that is not a decimal number is refused with its text", () => {
    // An empty query_timeout used to become 0 (no statement timeout at all), 0x10 became 16,
    // and 5s was reported as NaN.
    for (
      const [key, value] of [
        ["query_timeout", ""],
        ["query_timeout", "5s"],
        ["connect_timeout", "abc"],
        ["session_tmp_buffer", "0x10"],
        ["connect_timeout", " 3"],
      ]
    ) {
      const err = configError({
        db: `postgres://app:${SECRET}@db.example/app?${key}=${encodeURIComponent(value)}`,
        groups,
      });
      assert.match(err.message, new RegExp(key));
      assert.ok(err.message.includes(JSON.stringify(value)), err.message);
    }
  });
});

describe("config: ssl_root_cert", () => {
  const endpoint = { host: "db.example", name: "app", user: "app", pass: SECRET };
  const pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
  it("is refused with a mode that would not use it (libpq verifies with it under require)", () => {
    for (const ssl of ["require", "prefer", "disable", true]) {
      const err = configError({ db: { ...endpoint, ssl, ssl_root_cert: pem }, groups });
      assert.match(err.message, /ssl_root_cert/);
      assert.match(err.message, /verify-full/);
    }
  });
  it("must be PEM text, not a file name (libpq's sslrootcert is a path)", () => {
    const err = configError({
      db: { ...endpoint, ssl: "verify-full", ssl_root_cert: "/etc/ssl/ca.pem" },
      groups,
    });
    assert.match(err.message, /ssl_root_cert/);
    assert.match(err.message, /PEM/);
    assert.ok(err.message.includes('"/etc/ssl/ca.pem"'), err.message);
  });
  it("PEM text with verify-full is accepted", async () => {
    await using _p = new Pool({
      db: { ...endpoint, ssl: "verify-full", ssl_root_cert: pem },
      groups,
    });
  });
});

import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { ConfigError, Pool, type PoolConfig } from "../mod.ts";

const secret = "s3cr3t-Pa55";
const good = (): PoolConfig => ({
  db: [{ host: "127.0.0.1", port: 5432, name: "app", user: "app", pass: secret }],
  groups: { read: { connection_count: 2 } },
});

function configError(config: unknown, path: string, fragment: string): void {
  assert.throws(
    () => new Pool(config as PoolConfig),
    (err: unknown) => {
      assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
      assert.equal(err.path, path);
      assert.ok(err.message.startsWith(path), err.message);
      assert.ok(err.message.includes(fragment), `${err.message} should include ${fragment}`);
      assert.ok(!err.message.includes(secret), "message leaks the password");
      return true;
    },
  );
}

describe("config validation", () => {
  it("names the path and value of a bad connection_count", () => {
    const config = good();
    config.groups.read.connection_count = 0;
    configError(config, "groups.read.connection_count", "must be a positive integer (got 0)");
  });

  it("rejects unknown keys at every level", () => {
    configError({ ...good(), pool_size: 3 }, "pool_size", "is not a known option");
    const db = { ...good(), db: [{ ...(good().db as object[])[0], sslmode: "x" }] };
    configError(db, "db[0].sslmode", "is not a known option");
    const groups = { ...good(), groups: { read: { connection_count: 1, autocomit: true } } };
    configError(groups, "groups.read.autocomit", "is not a known option");
  });

  it("checks types, ranges and enums", () => {
    configError({ ...good(), type: "forked" }, "type", '(got "forked")');
    configError({ ...good(), db: [] }, "db", "at least one endpoint");
    configError({ ...good(), groups: {} }, "groups", "at least one group");
    const port = good();
    (port.db as { port: number }[])[0].port = 70000;
    configError(port, "db[0].port", "(got 70000)");
    const host = good();
    (host.db as { host: unknown }[])[0].host = "";
    configError(host, "db[0].host", '(got "")');
    configError(
      { ...good(), groups: { read: { connection_count: 1, endpoints: [3] } } },
      "groups.read.endpoints[0]",
      "(got 3)",
    );
    configError(
      { ...good(), groups: { read: { connection_count: 1, acquire_timeout_ms: -1 } } },
      "groups.read.acquire_timeout_ms",
      "(got -1)",
    );
    configError(
      { ...good(), groups: { read: { connection_count: 1, role: "leader" } } },
      "groups.read.role",
      '(got "leader")',
    );
    configError({ ...good(), validate_after_ms: "1s" }, "validate_after_ms", '(got "1s")');
    configError(
      { ...good(), groups: { read: { connection_count: 1, autocommit: "yes" } } },
      "groups.read.autocommit",
      '(got "yes")',
    );
  });

  it("never shows a mistyped password value", () => {
    const config = good();
    (config.db as { pass: unknown }[])[0].pass = 12345678;
    configError(config, "db[0].pass", "must be a string (got number)");
    assert.throws(() => new Pool(config), (err: Error) => !err.message.includes("12345678"));
  });

  it("accepts postgres:// URLs and redacts their password in errors", () => {
    const pool = new Pool({
      db: [`postgres://app:${secret}@db.example:6543/app?sslmode=require`],
      groups: { g: { connection_count: 1 } },
    });
    assert.ok(!inspect(pool, { depth: 10, showHidden: true }).includes(secret));
    configError(
      {
        db: [`postgres://app:${secret}@db.example/app?pool=3`],
        groups: { g: { connection_count: 1 } },
      },
      "db[0]?pool",
      "is not a known URL parameter",
    );
    configError(
      { db: [`mysql://app:${secret}@db.example/app`], groups: { g: { connection_count: 1 } } },
      "db[0]",
      "postgres:// scheme",
    );
  });

  it("accepts a single endpoint object and defaults", () => {
    const config = { db: good().db, groups: { g: { connection_count: 3 } } };
    const pool = new Pool({ ...config, db: (config.db as object[])[0] as PoolConfig["db"] });
    assert.equal(pool.closed, false);
  });

  it("does not mutate the caller's configuration", () => {
    const config = good();
    const before = JSON.stringify(config);
    Object.freeze(config.groups.read);
    Object.freeze(config.groups);
    Object.freeze(config);
    new Pool(config);
    assert.equal(JSON.stringify(config), before);
  });

  it("keeps the password out of inspect, JSON and toString of the pool", () => {
    const pool = new Pool(good());
    for (
      const text of [
        inspect(pool, { depth: 20, showHidden: true }),
        JSON.stringify(pool),
        String(pool),
      ]
    ) assert.ok(!text.includes(secret), text);
  });
});

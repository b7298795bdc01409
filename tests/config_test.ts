import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { inspect } from "node:util";
import { ConfigError, Pool, type PoolConfig } from "../mod.ts";
import { resolveConfig } from "../src/config.ts";
import { redactUrl } from "../src/redact.ts";

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

  it("bounds every duration by the largest timer delay, 2147483647 ms", () => {
    const max = 2147483647;
    const groupKeys = [
      "acquire_timeout_ms",
      "max_replica_lag_ms",
      "max_lifetime_ms",
      "idle_timeout_ms",
      "read_your_writes_timeout_ms",
    ];
    for (const key of groupKeys) {
      const path = `groups.read.${key}`;
      const group = (value: number) => ({
        ...good(),
        groups: { read: { connection_count: 1, [key]: value } },
      });
      configError(group(3e9), path, `at most ${max} (got 3000000000)`);
      configError(group(max + 1), path, `(got ${max + 1})`);
      for (const bad of [NaN, Infinity, -Infinity, -1]) {
        configError(group(bad), path, `(got ${bad})`);
      }
      assert.equal(resolveConfig(group(max)).groups[0].name, "read");
    }
    const topKeys = [
      "validate_after_ms",
      "health_check_interval_ms",
      "retry_backoff_max_ms",
      "probe_timeout_ms",
      "close_timeout_ms",
    ];
    for (const key of topKeys) {
      configError({ ...good(), [key]: 3e9 }, key, `at most ${max} (got 3000000000)`);
      configError({ ...good(), [key]: NaN }, key, "(got NaN)");
      configError({ ...good(), [key]: -5 }, key, "(got -5)");
      resolveConfig({ ...good(), [key]: max });
    }
    // The driver: a known name; "bun" falls back to postgres.js where Bun's SQL is missing.
    configError({ ...good(), driver: "pg" }, "driver", `must be "postgres" or "bun" (got "pg")`);
    configError(
      { ...good(), db: [{ ...(good().db as object[])[0], driver: 1 }] },
      "db[0].driver",
      "(got 1)",
    );
    const hasBun = typeof (globalThis as { Bun?: { SQL?: unknown } }).Bun?.SQL === "function";
    assert.equal(
      resolveConfig({ ...good(), driver: "bun" }).endpoints[0].driver,
      hasBun ? "bun" : "postgres",
    );
    assert.equal(resolveConfig(good()).endpoints[0].driver, "postgres");
    assert.equal(
      resolveConfig({
        ...good(),
        driver: "bun",
        db: [{ ...(good().db as object[])[0], driver: "postgres" }],
      })
        .endpoints[0].driver,
      "postgres",
      "an endpoint's own driver wins",
    );
    // A probe with no time at all could never succeed.
    configError(
      { ...good(), probe_timeout_ms: 0 },
      "probe_timeout_ms",
      "more than 0 milliseconds (got 0)",
    );
    assert.equal(resolveConfig(good()).probeTimeoutMs, 2000);
    assert.equal(resolveConfig(good()).retryBackoffMaxMs, 2000);
    const endpoint = (extra: Record<string, unknown>) => ({
      ...good(),
      db: [{ ...(good().db as object[])[0], ...extra }],
    });
    configError(
      endpoint({ query_timeout: 3e9 }),
      "db[0].query_timeout",
      `at most ${max} (got 3000000000)`,
    );
    configError(endpoint({ query_timeout: Infinity }), "db[0].query_timeout", "(got Infinity)");
    assert.equal(resolveConfig(endpoint({ query_timeout: max })).endpoints[0].queryTimeoutMs, max);
    // connect_timeout is in seconds: the same bound divided by 1000.
    configError(
      endpoint({ connect_timeout: 2147484 }),
      "db[0].connect_timeout",
      "at most 2147483.647 (got 2147484)",
    );
    for (const bad of [0, -1, NaN, Infinity]) {
      configError(endpoint({ connect_timeout: bad }), "db[0].connect_timeout", `(got ${bad})`);
    }
    assert.equal(
      resolveConfig(endpoint({ connect_timeout: 2147483.647 })).endpoints[0].connectTimeoutS,
      2147483.647,
    );
    // URL parameters go through the same checks.
    configError(
      {
        db: [`postgres://app:${secret}@db.example/app?query_timeout=3000000000`],
        groups: { g: { connection_count: 1 } },
      },
      "db[0].query_timeout",
      "(got 3000000000)",
    );
    configError(
      {
        db: [`postgres://app:${secret}@db.example/app?connect_timeout=1e7`],
        groups: { g: { connection_count: 1 } },
      },
      "db[0].connect_timeout",
      "(got 10000000)",
    );
  });

  it("keeps the password out of every URL error, however the URL is broken", () => {
    const pw = "Pw-9@x:y/z";
    const encoded = encodeURIComponent(pw);
    const cases: Array<[url: string, path: string, fragment: string]> = [
      // The raw password's "/" makes the URL unparsable: the redacted text is quoted instead.
      [`pg+tls://u:${pw}@h/db`, "db[0]", '(got "pg+tls://u:***@h/db")'],
      [`pg+tls://u:${encoded}@h/db`, "db[0]", '(got "pg+tls:")'],
      [`mysql://u:${encoded}@h/db`, "db[0]", "postgres:// scheme"],
      [`//u:${pw}@host/db`, "db[0]", '(got "//u:***@host/db")'],
      [`//u:${encoded}@host/db`, "db[0]", '(got "//u:***@host/db")'],
      // Not a scheme (space): everything from the first ":" to the last "@" goes.
      [`pg tls://u:${pw}@h/db`, "db[0]", '(got "pg tls:***@h/db")'],
      [`postgres://u:${pw}@h/db`, "db[0]", '(got "postgres://u:***@h/db")'],
      [`postgres://u:${pw}@h:99999/db`, "db[0]", '(got "postgres://u:***@h:99999/db")'],
      [`postgres:u:${pw}@h/db`, "db[0]", '"postgres:***@h/db"'],
      // "/", "?" and "#" end the authority early: the rest must not become a name or parameter.
      ["postgres://u:12/Pw-9@h/db", "db[0]", "as %2F %3F %23 %40"],
      ["postgres://u:12?Pw-9@h/db", "db[0]", "as %2F %3F %23 %40"],
      ["postgres://u:12#Pw-9@h/db", "db[0]", "as %2F %3F %23 %40"],
      ["postgres://u:Pw-9%zz@h/db", "db[0]", "malformed %-escape in its password"],
      ["postgres://u:Pw-9%E0%A4%A@h/db", "db[0]", "malformed %-escape in its password"],
      ["postgres://u%E0%A4%A:Pw-9@h/db", "db[0]", "in its user name; write a literal % as %25"],
      ["postgres://u:Pw-9@h/d%E0%A4%A", "db[0]", "in its database name; write a literal % as %25"],
      ["postgres://u:Pw-9@h%zz/db", "db[0]", 'in its host; write a literal % as %25 (got "h%zz")'],
      ["postgres://u:Pw-9@a%2Cb/db", "db[0].host", '(got "a,b")'],
    ];
    for (const [url, path, fragment] of cases) {
      const secretPart = url.includes(pw) || url.includes(encoded) ? pw : "Pw-9";
      assert.throws(
        () => new Pool({ db: [url], groups: { g: { connection_count: 1 } } }),
        (err: unknown) => {
          assert.ok(err instanceof ConfigError, `${url}: expected ConfigError, got ${err}`);
          assert.equal(err.path, path, url);
          assert.ok(err.message.includes(fragment), `${url}: ${err.message}`);
          assert.equal(err.cause, undefined, url);
          for (
            const text of [String(err), err.message, String(err.stack), inspect(err)]
          ) {
            for (const leak of [secretPart, encodeURIComponent(secretPart), "Pw-9"]) {
              assert.ok(!text.includes(leak), `${url}: leaks ${leak} in ${text}`);
            }
          }
          return true;
        },
      );
    }
  });

  it("keeps the password out of errors about text that is not a URL or not a host", () => {
    // Found by an audit: the whole config given as a URL, a libpq keyword string in db, a URL
    // whose password reads as a port, and a URL given as host were quoted as they were.
    const cases: Array<[config: unknown, path: string, fragment: string]> = [
      [`postgres://app:${secret}@db.internal:5432/app`, "config", "db: <url>"],
      [
        { db: `host=db.internal dbname=app user=app password=${secret}`, groups: good().groups },
        "db",
        "password=***",
      ],
      [
        { db: `host=h password='${secret} x' user=app`, groups: good().groups },
        "db",
        "password=***",
      ],
      [
        { db: `postgres://app:${secret}/app`, groups: good().groups },
        "db",
        "postgres://app:***/app",
      ],
      [
        {
          db: { ...good().db[0 as never] as object, host: `postgres://app:${secret}@db` },
          groups: good().groups,
        },
        "db.host",
        "not a URL",
      ],
      [
        {
          db: { ...good().db[0 as never] as object, host: `app:${secret}@db` },
          groups: good().groups,
        },
        "db.host",
        "not a URL",
      ],
    ];
    for (const [config, path, fragment] of cases) {
      assert.throws(() => new Pool(config as PoolConfig), (err: unknown) => {
        assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
        assert.equal(err.path, path, err.message);
        assert.ok(err.message.includes(fragment), `${err.message} should include ${fragment}`);
        for (const text of [String(err), String(err.stack), inspect(err)]) {
          assert.ok(!text.includes(secret), `leaks the password: ${text}`);
        }
        return true;
      });
    }
    // A socket directory is a host too.
    const socketDir = good();
    (socketDir.db as { host: string }[])[0].host = "/var/run/postgresql";
    assert.doesNotThrow(() => resolveConfig(socketDir));
  });

  it("keeps the password out of errors about a libpq keyword string given as host", () => {
    // Found by audit 14: the host check quoted a host with whitespace or a comma as it was, so a
    // keyword string pasted into host showed its password; one without either (password=...
    // alone) was taken as a host name, to be quoted by stats and every connection error.
    for (
      const host of [
        `host=db.internal dbname=app user=app password=${secret}`,
        `db.internal,password=${secret}`,
        `password=${secret}`,
        // libpq unescapes a backslash in an unquoted value: the password runs past the space.
        `host=db.internal password=${secret.slice(0, 4)}\\ ${secret.slice(4)} user=app`,
        `host=db.internal password='${secret.slice(0, 4)}\\' ${secret.slice(4)}' user=app`,
      ]
    ) {
      const config = good();
      (config.db as { host: string }[])[0].host = host;
      assert.throws(() => new Pool(config), (err: unknown) => {
        assert.ok(err instanceof ConfigError, `expected ConfigError, got ${err}`);
        assert.equal(err.path, "db[0].host", err.message);
        assert.ok(err.message.includes("password=***"), err.message);
        for (const text of [String(err), String(err.stack), inspect(err)]) {
          assert.ok(!text.includes(secret.slice(4)), `leaks the password: ${text}`);
        }
        return true;
      });
    }
  });

  it("refuses NUL characters in strings sent at start-up, never quoting the password", () => {
    // Found by audit 14: they were accepted, yet the start-up message ends each value at a NUL:
    // the rest of the value was cut off or read as start-up parameters of its own
    // (application_name "app\0options\0-c ..."), or the message was garbled.
    const withApp = { ...good(), application_name: "app\0options\0-c search_path=evil" };
    configError(withApp, "application_name", "must not contain NUL characters");
    for (const key of ["host", "name", "user"] as const) {
      const config = good();
      (config.db as unknown as Record<string, string>[])[0][key] = "a\0b";
      configError(config, `db[0].${key}`, "must not contain NUL characters");
    }
    const pass = good();
    (pass.db as unknown as Record<string, string>[])[0].pass = `${secret}\0rest`;
    configError(pass, "db[0].pass", "must not contain NUL characters");
  });

  it("decodes user, password and database of a URL", () => {
    const pw = "p@ss:w/rd%?#";
    const url = `postgresql://${encodeURIComponent("ü s")}:${
      encodeURIComponent(pw)
    }@db.example:6543/${encodeURIComponent("my db")}?connect_timeout=3&prepare=false`;
    const [endpoint] = resolveConfig({ db: url, groups: { g: { connection_count: 1 } } }).endpoints;
    assert.equal(endpoint.user, "ü s");
    assert.equal(endpoint.password(), pw);
    assert.equal(endpoint.database, "my db");
    assert.equal(endpoint.host, "db.example");
    assert.equal(endpoint.port, 6543);
    assert.equal(endpoint.connectTimeoutS, 3);
    assert.equal(endpoint.prepare, false);
    // "@" and ":" typed raw in the password: the URL parser splits at the last "@".
    const raw = resolveConfig({
      db: "postgres://u:a@b:c@h/db",
      groups: { g: { connection_count: 1 } },
    }).endpoints[0];
    assert.equal(raw.password(), "a@b:c");
    assert.equal(raw.host, "h");
  });

  it("takes IPv6 literal hosts from URLs and objects unchanged", () => {
    const groups = { g: { connection_count: 1 } };
    const fromUrl = (url: string) => resolveConfig({ db: url, groups }).endpoints[0];
    assert.equal(fromUrl(`postgres://u:${secret}@[::1]:5433/db`).host, "::1");
    assert.equal(fromUrl(`postgres://u:${secret}@[::1]:5433/db`).port, 5433);
    assert.equal(fromUrl(`postgres://u:${secret}@[fd12:3456::10]/db`).host, "fd12:3456::10");
    const fromObject = (host: string) =>
      resolveConfig({ db: { host, name: "db", user: "u", pass: secret }, groups }).endpoints[0];
    for (const host of ["::1", "fd12:3456::10", "127.0.0.1", "db-1.internal", "/var/run/pg"]) {
      assert.equal(fromObject(host).host, host);
      assert.equal(fromObject(host).port, 5432);
    }
  });

  it("rejects a host with a comma or whitespace: postgres.js would read a host list", () => {
    for (const bad of ["a,b", "db1:5432,db2:5432", " db", "db ", "d b", "db\n", "db\t"]) {
      const config = good();
      (config.db as { host: string }[])[0].host = bad;
      configError(
        config,
        "db[0].host",
        `without commas or whitespace (got ${JSON.stringify(bad)})`,
      );
    }
  });

  it("redactUrl hides the password of any URL-like text", () => {
    const cases: Array<[string, string]> = [
      ["postgres://u:pw@h/db", "postgres://u:***@h/db"],
      [
        "POSTGRESQL://u:pw@h:5432/db?sslmode=require",
        "POSTGRESQL://u:***@h:5432/db?sslmode=require",
      ],
      ["pg+tls://u:pw@h/db", "pg+tls://u:***@h/db"],
      ["jdbc:postgresql://u:pw@h/db", "jdbc:postgresql://u:***@h/db"],
      ["//user:pw@host/db", "//user:***@host/db"],
      ["  //user:pw@host/db", "  //user:***@host/db"],
      ["postgres://u:p@w@h/db", "postgres://u:***@h/db"],
      ["postgres://u:p:w@h/db", "postgres://u:***@h/db"],
      ["postgres://u:p/w@h/db", "postgres://u:***@h/db"],
      ["postgres://u:p//w@h/db", "postgres://u:***@h/db"],
      ["postgres:u:p//w@h/db", "postgres:***@h/db"],
      ["u:pw@h/db", "u:***@h/db"],
      ["postgres://u:@h/db", "postgres://u:***@h/db"],
      ["postgres://u@h/db", "postgres://u@h/db"],
      ["postgres://h:5432/db", "postgres://h:5432/db"],
      ["", ""],
    ];
    for (const [input, want] of cases) assert.equal(redactUrl(input), want, input);
  });
});

// TLS modes against a server with a self-signed certificate (CN=localhost, SAN 127.0.0.1).
// The server accepts both TLS and plain TCP, so each mode's choice is visible in pg_stat_ssl.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { type PgCluster, startCluster } from "./harness/cluster.ts";
import { setTestTimeout } from "./harness/runtime.ts";
import { waitFor } from "./harness/wait.ts";
import { type EndpointConfig, Pool } from "../mod.ts";

await setTestTimeout(180_000);

const APP = "tls_test";
let cluster: PgCluster;
let rootCert: string;

before(async () => {
  cluster = await startCluster({ replicas: 0, ssl: true });
  assert.ok(cluster.sslCertFile, "the harness should expose the server certificate");
  rootCert = readFileSync(cluster.sslCertFile, "utf8");
}, { timeout: 120_000 });

after(async () => {
  await cluster?.close();
}, { timeout: 60_000 });

function endpoint(extra: Partial<EndpointConfig>): EndpointConfig {
  return { ...cluster.endpoints()[0], ...extra };
}

/** Opens a pool on one endpoint, reports whether its session uses TLS, closes the pool. */
async function sessionSsl(
  db: EndpointConfig | string,
): Promise<{ ssl: boolean; version: string | null }> {
  const pool = new Pool({ db, groups: { g: { connection_count: 1 } }, application_name: APP });
  try {
    const [row] = await pool.query<{ ssl: boolean; version: string | null }>(
      "g",
      "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
    );
    return { ssl: row.ssl, version: row.version };
  } finally {
    await pool.close();
  }
}

describe("TLS modes", () => {
  it('"disable" connects without TLS (the default)', async () => {
    assert.deepEqual(await sessionSsl(endpoint({ ssl: "disable" })), { ssl: false, version: null });
    assert.equal((await sessionSsl(endpoint({}))).ssl, false);
    assert.equal((await sessionSsl(endpoint({ ssl: false }))).ssl, false);
  });

  it('"require" connects with TLS without verifying the certificate', async () => {
    const s = await sessionSsl(endpoint({ ssl: "require" }));
    assert.equal(s.ssl, true);
    assert.match(s.version ?? "", /^TLSv1\.[23]$/);
    assert.equal((await sessionSsl(endpoint({ ssl: true }))).ssl, true, "ssl: true means require");
  });

  it('"prefer" uses TLS when the server offers it', async () => {
    assert.equal((await sessionSsl(endpoint({ ssl: "prefer" }))).ssl, true);
  });

  it('"verify-full" with ssl_root_cert verifies the chain and the host name', async () => {
    assert.equal(
      (await sessionSsl(endpoint({ ssl: "verify-full", ssl_root_cert: rootCert }))).ssl,
      true,
    );
    // The certificate names DNS:localhost too.
    assert.equal(
      (await sessionSsl(
        endpoint({ host: "localhost", ssl: "verify-full", ssl_root_cert: rootCert }),
      )).ssl,
      true,
    );
  });

  it("sslmode in a postgres:// URL", async () => {
    const { host, port, name, user, pass } = cluster.endpoints()[0];
    const url = `postgres://${user}:${encodeURIComponent(pass)}@${host}:${port}/${name}`;
    assert.equal((await sessionSsl(`${url}?sslmode=require`)).ssl, true);
    assert.equal((await sessionSsl(`${url}?sslmode=disable`)).ssl, false);
  });

  it('"verify-full" without the root certificate fails with a certificate error, never showing the password', async () => {
    const pool = new Pool({
      db: endpoint({ ssl: "verify-full", connect_timeout: 10 }),
      groups: { g: { connection_count: 1 } },
      application_name: APP,
    });
    try {
      await assert.rejects(pool.query("g", "SELECT 1"), (err: Error & { code?: string }) => {
        const text = `${err.name} ${err.message} ${err.code ?? ""} ${err.stack ?? ""} ${
          JSON.stringify(err)
        }`;
        assert.match(
          text,
          /certificate|self[- ]signed|DEPTH_ZERO_SELF_SIGNED_CERT|UNABLE_TO_VERIFY/i,
          text,
        );
        assert.ok(!text.includes(cluster.password), `the error shows the password: ${text}`);
        const cause = (err as { cause?: unknown }).cause;
        if (cause !== undefined) assert.ok(!String(cause).includes(cluster.password));
        return true;
      });
    } finally {
      await pool.close();
    }
  });

  it("leaves no connection behind", async () => {
    await waitFor(async () => (await cluster.countConnections({ applicationName: APP })) === 0, {
      timeoutMs: 10_000,
      message: `no connection with application_name ${APP}`,
    });
  });
});

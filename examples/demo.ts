/**
 * The main job in one run: start a throw-away primary + streaming replica (embedded PostgreSQL
 * from npm), write through a transactional group that follows the primary, read your own write
 * from a replica, and show what the pool saw. Run with `npm run demo`.
 */
import { startCluster } from "../tests/harness/cluster.ts";
import { Pool } from "../mod.ts";

const cluster = await startCluster({ replicas: 1 });
console.log(
  `PostgreSQL ${cluster.version}: primary :${cluster.primary.port}, replica :${
    cluster.replicas[0].port
  }`,
);
try {
  await using pool = new Pool({
    db: cluster.endpoints(),
    groups: {
      write: { connection_count: 2, autocommit: false, role: "primary" },
      read: { connection_count: 4, role: "replica" },
    },
  });
  await pool.query("write", "CREATE TABLE visits (id serial PRIMARY KEY, page text NOT NULL)");

  let token: string | undefined;
  {
    using db = pool.handler("write");
    await db.query("INSERT INTO visits (page) VALUES ($1), ($2)", ["/", "/about"]);
    token = await db.commit();
    console.log(`committed on :${db.endpoint?.port}, read-your-writes token ${token}`);
  }
  {
    using db = pool.handler("write");
    await db.query("INSERT INTO visits (page) VALUES ('/never')");
    // No commit: leaving the block rolls back.
  }
  {
    await using db = pool.handler("read", { after: token });
    const rows = await db.query("SELECT page FROM visits ORDER BY id");
    console.log(`read on :${db.endpoint?.port}:`, rows.map((r) => r.page).join(", "));
  }
  const hits = await Promise.all(
    Array.from({ length: 20 }, (_, i) => pool.query("read", "SELECT $1::int AS i", [i])),
  );
  console.log(`20 concurrent reads answered: ${hits.length}`);
  console.log(JSON.stringify(pool.stats(), null, 2));
} finally {
  await cluster.close();
}

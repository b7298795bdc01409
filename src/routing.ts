/**
 * Which endpoints a group may use right now, from its declared role, the detected roles, health
 * and replica lag. Pure: the topology supplies the facts, groups apply the answer.
 *
 * @module
 */

import type { ResolvedGroup } from "./config.ts";
import type { Endpoint } from "./endpoint.ts";

/**
 * The endpoints of `candidates` that `group` may route to. `primary` is the topology's current
 * primary (at most one, even in a split brain); `comparable` tells whether a replica's lag was
 * measured against that primary's own history (not so for one still on an older primary's
 * timeline in a split brain): `max_replica_lag_ms` trusts no other.
 */
export function route(
  group: ResolvedGroup,
  candidates: readonly Endpoint[],
  primary: Endpoint | undefined,
  comparable: (replica: Endpoint) => boolean = () => true,
): Endpoint[] {
  const lagOk = (e: Endpoint) =>
    group.maxReplicaLagMs === undefined ||
    (e.lagKnown && e.lagMs <= group.maxReplicaLagMs && comparable(e));
  const replicas = () =>
    candidates.filter((e) => e.state === "up" && e.role === "replica" && lagOk(e));
  const primaryOnly = () => primary !== undefined && candidates.includes(primary) ? [primary] : [];
  switch (group.role) {
    case "primary":
      return primaryOnly();
    case "replica":
      return replicas();
    case "prefer-replica": {
      const r = replicas();
      return r.length > 0 ? r : primaryOnly();
    }
    default:
      // "any": every healthy server; a second self-declared primary (split brain) is left out.
      return candidates.filter((e) =>
        e.state === "up" &&
        (e.role === "replica" ? lagOk(e) : e.role !== "primary" || e === primary)
      );
  }
}

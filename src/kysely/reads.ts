/**
 * Which Kysely queries are reads: a SELECT that locks no rows and whose common table
 * expressions are reads too (a `WITH ... INSERT ... RETURNING` feeding a SELECT writes).
 * Raw SQL (`sql\`...\``) is never taken for a read, as Drizzle's `withReplicas` treats
 * `execute`.
 *
 * @module
 */

import type { OperationNode, RootOperationNode, SelectQueryNode } from "kysely";

const LOCKS = new Set(["ForUpdate", "ForNoKeyUpdate", "ForShare", "ForKeyShare"]);

/** Whether `node` only reads, so that it may run on a replica. */
export function isRead(node: RootOperationNode): boolean {
  return node.kind === "SelectQueryNode" && pureSelect(node as SelectQueryNode);
}

function pureSelect(node: SelectQueryNode): boolean {
  for (const modifier of node.endModifiers ?? []) {
    // A raw end modifier (modifyEnd(sql`...`)) may be a lock clause as well.
    if (modifier.rawModifier !== undefined) return false;
    if (modifier.modifier !== undefined && LOCKS.has(modifier.modifier)) return false;
  }
  for (const cte of node.with?.expressions ?? []) {
    if (!isSelect(cte.expression) || !pureSelect(cte.expression)) return false;
  }
  return true;
}

function isSelect(node: OperationNode): node is SelectQueryNode {
  return node.kind === "SelectQueryNode";
}

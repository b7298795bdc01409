/**
 * Which Kysely queries are reads: a SELECT in which no SELECT, at any depth (a CTE, a subquery
 * in FROM, WHERE or the select list), locks rows, and which holds no data-modifying query (a
 * `WITH ... INSERT ... RETURNING` feeding a SELECT writes). Raw SQL (`sql\`...\``) is never
 * taken for a read, as Drizzle's `withReplicas` treats `execute`.
 *
 * @module
 */

import type {
  CommonTableExpressionNode,
  OperationNode,
  RootOperationNode,
  SelectQueryNode,
} from "kysely";

const LOCKS = new Set(["ForUpdate", "ForNoKeyUpdate", "ForShare", "ForKeyShare"]);
const VALUES = new Set(["ValueNode", "PrimitiveValueListNode"]);
const WRITES = new Set(["InsertQueryNode", "UpdateQueryNode", "DeleteQueryNode", "MergeQueryNode"]);

/** Whether `node` only reads, so that it may run on a replica. */
export function isRead(node: RootOperationNode): boolean {
  return node.kind === "SelectQueryNode" && readsOnly(node);
}

// Every node of the tree is looked at, not only the outermost SELECT and its CTEs: PostgreSQL
// takes a lock clause in any subquery (and a replica refuses it, 25006).
function readsOnly(node: OperationNode): boolean {
  // The caller's values: no query inside, and not the pool's to walk (any shape, even cyclic).
  if (VALUES.has(node.kind)) return true;
  if (WRITES.has(node.kind)) return false;
  // A CTE that is not a SELECT (raw SQL: sql`INSERT ... RETURNING ...`) may write.
  if (node.kind === "CommonTableExpressionNode") {
    const { expression } = node as CommonTableExpressionNode;
    if (expression.kind !== "SelectQueryNode") return false;
  }
  if (node.kind === "SelectQueryNode") {
    for (const modifier of (node as SelectQueryNode).endModifiers ?? []) {
      // A raw end modifier (modifyEnd(sql`...`)) may be a lock clause as well.
      if (modifier.rawModifier !== undefined) return false;
      if (modifier.modifier !== undefined && LOCKS.has(modifier.modifier)) return false;
    }
  }
  for (const value of Object.values(node)) {
    if (Array.isArray(value)) {
      for (const item of value) if (isNode(item) && !readsOnly(item)) return false;
    } else if (isNode(value) && !readsOnly(value)) return false;
  }
  return true;
}

function isNode(value: unknown): value is OperationNode {
  return typeof value === "object" && value !== null &&
    typeof (value as { kind?: unknown }).kind === "string";
}

/**
 * Rows in array mode (values in column order) turned into the objects a Drizzle select
 * returns: each value decoded by its column's codec and put at its path (`{ users: { id } }`
 * for joins), and a left-joined table whose columns are all NULL becomes `null`.
 *
 * @module
 */

import { Column, getTableName, is, SQL, Subquery } from "drizzle-orm";
import type { SelectedFieldsOrdered } from "drizzle-orm/pg-core";

interface Decoder {
  mapFromDriverValue(value: unknown): unknown;
}

type Field = SelectedFieldsOrdered[number]["field"];

function decoderOf(field: Field): Decoder {
  if (is(field, Column)) return field;
  // Drizzle keeps the codec of an SQL expression in `decoder` (not in its public types).
  if (is(field, SQL)) return (field as unknown as { decoder: Decoder }).decoder;
  if (is(field, Subquery)) return (field._.sql as unknown as { decoder: Decoder }).decoder;
  return (field as unknown as { sql: { decoder: Decoder } }).sql.decoder;
}

/**
 * Maps one row. `nullable` is Drizzle's map of joined tables to whether their side of the join
 * may be missing; `undefined` for selects without joins.
 */
export function mapRow(
  fields: SelectedFieldsOrdered,
  row: readonly unknown[],
  nullable: Record<string, boolean> | undefined,
): Record<string, unknown> {
  const result: Record<string, unknown> = {};
  // Per joined object: the table of its first column when that was NULL, else false.
  let allNull: Map<string, string | false> | undefined;
  for (let i = 0; i < fields.length; i++) {
    const { path, field } = fields[i];
    const raw = row[i];
    const value = raw === null ? null : decoderOf(field).mapFromDriverValue(raw);
    let node = result;
    const last = path.length - 1;
    for (let p = 0; p < last; p++) {
      node = (node[path[p]] ??= {}) as Record<string, unknown>;
    }
    node[path[last]] = value;
    if (nullable !== undefined && path.length === 2 && is(field, Column)) {
      allNull ??= new Map();
      const table = getTableName(field.table);
      // As Drizzle's own drivers do: the first column of the object decides, unless the object
      // mixes columns of several tables.
      const seen = allNull.get(path[0]);
      if (seen === undefined) allNull.set(path[0], value === null ? table : false);
      else if (seen !== false && seen !== table) allNull.set(path[0], false);
    }
  }
  if (allNull !== undefined) {
    for (const [name, table] of allNull) {
      if (table !== false && !nullable![table]) result[name] = null;
    }
  }
  return result;
}

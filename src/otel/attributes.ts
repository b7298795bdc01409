/**
 * Attribute names and values of the OpenTelemetry database-client semantic conventions, built
 * once per group, and per server and operation, and reused for every measurement (no
 * allocation on the hot path unless a statement fails).
 *
 * @module
 */

import type { Attributes } from "@opentelemetry/api";
import type { EndpointInfo } from "../endpoint.ts";

/** `db.client.connection.pool.name`: the group name. */
export const POOL_NAME = "db.client.connection.pool.name";
/** `db.client.connection.state`: `idle` or `used`. */
export const CONNECTION_STATE = "db.client.connection.state";
/** `db.system.name`: always `postgresql`. */
export const SYSTEM_NAME = "db.system.name";
/** `db.namespace`: the database name sessions open. */
export const NAMESPACE = "db.namespace";
/** `server.address`: the configured host. */
export const SERVER_ADDRESS = "server.address";
/** `server.port`: the configured port. */
export const SERVER_PORT = "server.port";
/** `db.operation.name`: the statement's command keyword, when it is one operation. */
export const OPERATION_NAME = "db.operation.name";
/** `db.query.text`: the statement as given (only with `queryText: true`). */
export const QUERY_TEXT = "db.query.text";
/** `db.response.status_code`: the SQLSTATE of a failed statement. */
export const STATUS_CODE = "db.response.status_code";
/** `error.type`: the SQLSTATE, else the error's code or class name. */
export const ERROR_TYPE = "error.type";

/** Attributes of one group's connection metrics. */
export interface GroupAttributes {
  /** `{ db.client.connection.pool.name }`. */
  readonly pool: Attributes;
  /** The same with `db.client.connection.state: idle`. */
  readonly idle: Attributes;
  /** The same with `db.client.connection.state: used`. */
  readonly used: Attributes;
}

/** Per-group attribute sets, made on first use. */
export class GroupAttributeCache {
  readonly #byGroup = new Map<string, GroupAttributes>();

  /** The attribute sets of `group`. */
  of(group: string): GroupAttributes {
    let found = this.#byGroup.get(group);
    if (found === undefined) {
      found = Object.freeze({
        pool: Object.freeze({ [POOL_NAME]: group }),
        idle: Object.freeze({ [POOL_NAME]: group, [CONNECTION_STATE]: "idle" }),
        used: Object.freeze({ [POOL_NAME]: group, [CONNECTION_STATE]: "used" }),
      });
      this.#byGroup.set(group, found);
    }
    return found;
  }
}

/** One endpoint's statement attributes, per operation (a fixed set of keywords). */
interface ServerAttributes {
  readonly database: string;
  readonly byOperation: Map<string | undefined, Attributes>;
}

/**
 * Per-server attributes of statements (`db.system.name`, `db.namespace`, `server.address`,
 * `server.port`, and `db.operation.name` when known). An endpoint's `info` object lives as long
 * as its pool, so it is the key.
 */
export class ServerAttributeCache {
  readonly #byEndpoint = new WeakMap<EndpointInfo, ServerAttributes>();

  /** The attributes of statements sent to `endpoint`, on `database`, doing `operation`. */
  of(endpoint: EndpointInfo, database: string, operation: string | undefined): Attributes {
    let server = this.#byEndpoint.get(endpoint);
    if (server === undefined || server.database !== database) {
      server = { database, byOperation: new Map() };
      this.#byEndpoint.set(endpoint, server);
    }
    let found = server.byOperation.get(operation);
    if (found === undefined) {
      const base: Attributes = {
        [SYSTEM_NAME]: "postgresql",
        [NAMESPACE]: database,
        [SERVER_ADDRESS]: endpoint.host,
        [SERVER_PORT]: endpoint.port,
      };
      if (operation !== undefined) base[OPERATION_NAME] = operation;
      found = Object.freeze(base);
      server.byOperation.set(operation, found);
    }
    return found;
  }
}

// A SQLSTATE: five digits or upper-case letters, of a class PostgreSQL uses (00-5x, F0, HV, P0,
// XX). Socket codes such as EPIPE are five letters too, but of no such class.
const SQLSTATE = /^(?:[0-5][0-9A-Z]|F0|HV|P0|XX)[0-9A-Z]{3}$/;
// A driver or socket code worth reporting as `error.type` (CONNECTION_CLOSED, ECONNREFUSED).
const CODE = /^[A-Z][A-Z0-9_]{1,63}$/;

/** What a failure adds to a statement's attributes and how its span status reads. */
export interface Failure {
  /** `db.response.status_code` (a SQLSTATE) when the server answered with one. */
  readonly statusCode: string | undefined;
  /** `error.type`: the SQLSTATE, else the error's code, else its class name, else `_OTHER`. */
  readonly type: string;
}

/** Classifies a statement's error; never reads its message (it may hold data values). */
export function failureOf(error: unknown): Failure {
  const code = (error as { code?: unknown } | null)?.code;
  if (typeof code === "string" && SQLSTATE.test(code)) return { statusCode: code, type: code };
  // Bun's SQL (db.sql under the Bun driver) keeps the SQLSTATE in `errno`, its own code in `code`.
  const errno = (error as { errno?: unknown } | null)?.errno;
  if (typeof errno === "string" && SQLSTATE.test(errno)) return { statusCode: errno, type: errno };
  if (typeof code === "string" && CODE.test(code)) return { statusCode: undefined, type: code };
  const name = (error as { name?: unknown } | null)?.name;
  if (typeof name === "string" && name.length > 0 && name.length <= 64) {
    return { statusCode: undefined, type: name };
  }
  return { statusCode: undefined, type: "_OTHER" };
}

/** `base` plus the failure's `db.response.status_code` and `error.type`. */
export function withFailure(base: Attributes, failure: Failure): Attributes {
  return failure.statusCode === undefined
    ? { ...base, [ERROR_TYPE]: failure.type }
    : { ...base, [STATUS_CODE]: failure.statusCode, [ERROR_TYPE]: failure.type };
}

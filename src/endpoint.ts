/**
 * One configured PostgreSQL server at run time: where it is, how to open a postgres.js client to
 * it, and what the pool currently knows of it (role, health).
 *
 * @module
 */

import postgres from "postgres";
import type { ResolvedEndpoint, SslMode } from "./config.ts";

/** Detected role of an endpoint. `unknown` until its first connection or probe. */
export type EndpointRole = "primary" | "replica" | "unknown";

/** Health of an endpoint: `down` endpoints are skipped until a probe succeeds. */
export type EndpointState = "up" | "down";

/** Where a handler's connection goes: printable, never carries credentials. */
export interface EndpointInfo {
  /** Host name or address. */
  readonly host: string;
  /** TCP port. */
  readonly port: number;
  /** Index of the endpoint in the configuration's `db` list. */
  readonly index: number;
}

/** Callbacks a client reports to its owner. */
export interface ClientHooks {
  onclose(): void;
  onnotice(notice: { code?: string }): void;
  onparameter(key: string, value: string): void;
}

const sslOption: Record<SslMode, false | "prefer" | "require" | "verify-full"> = {
  "disable": false,
  "prefer": "prefer",
  "require": "require",
  "verify-full": "verify-full",
};

/** A server of the pool. Shared by every group that lists it. */
export class Endpoint {
  /** Printable identity (host, port, index). */
  readonly info: EndpointInfo;
  /** Detected role. */
  role: EndpointRole = "unknown";
  /** Health state. */
  state: EndpointState = "up";
  /** Connection-level errors seen on this endpoint. */
  errors = 0;
  /** Options passed with every statement, built once. */
  readonly queryOptions: { prepare: boolean };
  readonly #settings: ResolvedEndpoint;
  readonly #applicationName: string;

  constructor(settings: ResolvedEndpoint, applicationName: string) {
    this.#settings = settings;
    this.#applicationName = applicationName;
    this.info = Object.freeze({ host: settings.host, port: settings.port, index: settings.index });
    this.queryOptions = { prepare: settings.prepare };
  }

  /** Index in the configuration's `db` list. */
  get index(): number {
    return this.#settings.index;
  }

  /** Seconds allowed to connect. */
  get connectTimeoutS(): number {
    return this.#settings.connectTimeoutS;
  }

  /**
   * Opens (lazily) a single-connection postgres.js client. One client per pooled connection:
   * postgres.js's own multi-host and `reserve()` paths hang or misroute (see the notes).
   */
  client(hooks: ClientHooks): postgres.Sql {
    const s = this.#settings;
    const connection: Record<string, string | number> = {
      application_name: this.#applicationName,
    };
    if (s.queryTimeoutMs !== undefined) connection.statement_timeout = s.queryTimeoutMs;
    if (s.tmpBufferMb !== undefined) connection.temp_buffers = `${s.tmpBufferMb}MB`;
    return postgres({
      host: s.host,
      port: s.port,
      database: s.database,
      username: s.user,
      password: s.password(),
      ssl: s.ssl === "verify-full" && s.sslRootCert !== undefined
        ? { ca: s.sslRootCert, rejectUnauthorized: true }
        : sslOption[s.ssl],
      max: 1,
      connect_timeout: s.connectTimeoutS,
      idle_timeout: 0,
      max_lifetime: null,
      prepare: s.prepare,
      connection,
      onclose: hooks.onclose,
      onnotice: hooks.onnotice,
      onparameter: hooks.onparameter,
    } as postgres.Options<Record<string, postgres.PostgresType>>);
  }

  /** JSON form: identity and state, never credentials. */
  toJSON(): { host: string; port: number; index: number; role: EndpointRole; state: EndpointState } {
    return { ...this.info, role: this.role, state: this.state };
  }
}

/**
 * One pooled server connection, as the pool's books see it: its session, where it lives, when it
 * was last used and when it retires, and who holds it. A connection is, at every moment, exactly
 * one of: idle in its member's list, held (by one checkout, or by one shared hold of one-shot
 * statements), or closing.
 *
 * @module
 */

import type { Outcome } from "./driver/postgres.ts";
import type { DriverSession } from "./driver/session.ts";
import { withDeadline } from "./deadline.ts";
import type { Endpoint } from "./endpoint.ts";
import { Beacon, REQUEST_BOUND_IO } from "./request_bound.ts";
import { CLEAN, type Residue } from "./session_state.ts";

/** Where an idle connection waits: one list per endpoint of a group. */
export interface Member {
  readonly endpoint: Endpoint;
  readonly idle: ServerConnection[];
  open: number;
  /** Routing currently allows this endpoint for the group. */
  active: boolean;
  /** Left out of the group's routing because its replica lag passed `max_replica_lag_ms`. */
  lagging: boolean;
}

/** Who holds a connection right now. */
export type ConnectionState = "idle" | "held" | "shared" | "closing";

/** A pooled connection: one server session for its whole life (never reconnected). */
export class ServerConnection {
  readonly member: Member;
  readonly session: DriverSession;
  state: ConnectionState = "held";
  /** `performance.now()` after the last statement finished; 0 before the first. */
  lastUsed = 0;
  /** One-shot statements holding this connection at once (state `shared`). */
  users = 0;
  /** `performance.now()` after which this connection is retired. */
  readonly retireAt: number;
  /** `performance.now()` when its current holder took it, kept only while observed (else 0). */
  heldSince = 0;
  /**
   * Session state one-shots left while it was shared (`session_state.ts`): it takes no more
   * and is cleaned when the last one leaves. Set and cleared by the group only.
   */
  residue: Residue = CLEAN;
  /**
   * Where I/O is bound to a request (workerd): beats in the request that opened the connection,
   * which alone reads its answers (`request_bound.ts`); absent anywhere else.
   */
  readonly beacon: Beacon | undefined;

  constructor(
    member: Member,
    retireAt: number,
    onParameter: (conn: ServerConnection, key: string, value: string) => void,
    onConnected: (ms: number) => void,
  ) {
    this.member = member;
    this.retireAt = retireAt;
    // Sessions open lazily, on their first statement: the clock starts when the driver dials
    // (else a caller's pause between checkout and first statement would count as connecting).
    // postgres.js on workerd dials through its own socket and says nothing: there it starts now.
    let openedAt = performance.now();
    let connected = false;
    this.session = member.endpoint.session({
      onDial: () => {
        openedAt = performance.now();
      },
      onParameter: (key, value) => {
        // The server reports its parameters right after accepting the start-up.
        if (!connected) {
          connected = true;
          onConnected(performance.now() - openedAt);
        }
        onParameter(this, key, value);
      },
    });
    this.beacon = REQUEST_BOUND_IO
      ? new Beacon(member.endpoint.connectTimeoutS * 1000, () => !this.session.dead)
      : undefined;
  }

  /** The endpoint this connection talks to. */
  get endpoint(): Endpoint {
    return this.member.endpoint;
  }

  /** The session has ended: never send on it again. */
  get dead(): boolean {
    return this.session.dead;
  }

  /** What is known of a statement (`text`) that failed on this connection with `err`. */
  outcomeOf(err: unknown, text: string): Outcome {
    return this.session.outcomeOf(err, text);
  }

  /** A cheap round trip proving the session is alive; rejects after `timeoutMs`. */
  ping(timeoutMs: number): Promise<unknown> {
    return withDeadline(this.session.query("SELECT 1", undefined, PING), timeoutMs);
  }

  /**
   * Ends the session; statements in flight get `timeoutMs` before the socket is cut. Ownership
   * does not change: a holder keeps a dead connection until it checks it in.
   */
  end(timeoutMs: number): Promise<void> {
    this.beacon?.stop();
    return this.session.end(timeoutMs);
  }
}

const PING = { prepare: false };

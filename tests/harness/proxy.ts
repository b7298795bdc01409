// A TCP proxy on 127.0.0.1 for fault injection between a client and one server.
import { connect, createServer, type Server, type Socket } from "node:net";
import { Buffer } from "node:buffer";

export type ProxyMode = "pass" | "blackhole" | "refuse";

export interface TcpProxy {
  /** Where clients connect. */
  readonly host: string;
  readonly port: number;
  /**
   * pass: relay both ways. blackhole: keep sockets open and deliver nothing either way (a hung
   * host, or a network partition): data is held, as TCP keeps retransmitting it, and delivered
   * in order when the mode goes back to pass (the partition heals); connections opened meanwhile
   * reach the target only then. Nothing is ever dropped from a live connection: real TCP never
   * loses bytes in the middle of a stream, and a lossy proxy would desynchronise the protocol.
   * refuse: accept and reset at once (a listening socket cannot refuse at TCP level; clients see
   * ECONNRESET rather than ECONNREFUSED); switching to refuse also resets the open connections.
   */
  mode: ProxyMode;
  /** Added latency per chunk, each direction, in pass mode (order is kept). */
  delayMs: number;
  /**
   * Called right after a chunk from the server was handed to the client's socket, in the same
   * callback: a test can act at the exact moment between a reply's arrival in the client's
   * kernel buffer and the client reading it.
   */
  onServerChunk: ((chunk: Uint8Array) => void) | undefined;
  /**
   * Asked before a chunk from the server is relayed: `true` holds it and turns the proxy to
   * blackhole (a partition that starts right before that chunk).
   */
  holdServerChunk: ((chunk: Uint8Array) => boolean) | undefined;
  /**
   * Asked before a chunk from a client is relayed: a number `n` below the chunk's length relays
   * only its first `n` bytes and stalls the rest, with everything that client sends after it,
   * until `releaseClients()` (a client message cut right before its end: an Execute relayed,
   * its Sync not yet).
   */
  cutClientChunk: ((chunk: Uint8Array) => number) | undefined;
  /** Relays what `cutClientChunk` stalled, in order, and lets the clients' bytes flow again. */
  releaseClients(): void;
  /** Currently open client sockets. */
  readonly connections: number;
  /** Destroys all current connections with a TCP RST (clients see ECONNRESET). */
  dropAll(): void;
  close(): Promise<void>;
}

/** Starts a proxy on a free loopback port (of `listenHost`, default 127.0.0.1) forwarding to `target`. */
export async function startProxy(
  target: { host: string; port: number },
  listenHost = "127.0.0.1",
): Promise<TcpProxy> {
  const proxy = new Proxy(target, listenHost);
  await proxy.listen();
  return proxy;
}

interface Pair {
  client: Socket;
  upstream: Socket | undefined;
  /** Client bytes received while the pair had no upstream yet (opened during a blackhole). */
  early: Uint8Array[];
}

class Proxy implements TcpProxy {
  delayMs = 0;
  onServerChunk: ((chunk: Uint8Array) => void) | undefined = undefined;
  holdServerChunk: ((chunk: Uint8Array) => boolean) | undefined = undefined;
  cutClientChunk: ((chunk: Uint8Array) => number) | undefined = undefined;
  #mode: ProxyMode = "pass";
  #port = 0;
  readonly #pairs = new Set<Pair>();
  readonly #server: Server;
  /** Called when the mode goes back to pass: deliver what was held. */
  readonly #heal = new Set<() => void>();
  /** Called by releaseClients(): relay what a cut stalled. */
  readonly #release = new Set<() => void>();

  constructor(readonly target: { host: string; port: number }, readonly host: string) {
    this.#server = createServer((client) => this.#accept(client));
  }

  get port(): number {
    return this.#port;
  }

  get mode(): ProxyMode {
    return this.#mode;
  }

  set mode(mode: ProxyMode) {
    this.#mode = mode;
    if (mode === "refuse") this.dropAll();
    if (mode === "pass") { for (const heal of [...this.#heal]) heal(); }
  }

  releaseClients(): void {
    for (const release of [...this.#release]) release();
  }

  get connections(): number {
    return this.#pairs.size;
  }

  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#server.once("error", reject);
      this.#server.listen(0, this.host, () => {
        this.#port = (this.#server.address() as { port: number }).port;
        resolve();
      });
    });
  }

  dropAll(): void {
    for (const { client, upstream } of this.#pairs) {
      reset(client);
      if (upstream) reset(upstream);
    }
    this.#pairs.clear();
  }

  close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.dropAll();
    return closed;
  }

  #accept(client: Socket): void {
    client.on("error", () => {}); // resets are the point of this tool
    if (this.#mode === "refuse") {
      // RST, not FIN: postgres.js retries a connection closed cleanly during start-up until
      // connect_timeout, but fails at once on ECONNRESET, as on a real ECONNREFUSED.
      reset(client);
      return;
    }
    client.setNoDelay(true);
    const pair: Pair = { client, upstream: undefined, early: [] };
    this.#pairs.add(pair);
    client.on("close", () => this.#pairs.delete(pair));
    if (this.#mode === "pass") {
      this.#connectUpstream(pair);
      return;
    }
    // Opened during a blackhole: it reaches the target only when the partition heals.
    const early = (chunk: Uint8Array) => pair.early.push(chunk);
    client.on("data", early);
    const heal = () => {
      this.#heal.delete(heal);
      client.off("data", early);
      if (!client.destroyed) this.#connectUpstream(pair);
    };
    this.#heal.add(heal);
    client.on("close", () => this.#heal.delete(heal));
  }

  #connectUpstream(pair: Pair): void {
    const upstream = connect(this.target.port, this.target.host);
    upstream.setNoDelay(true);
    upstream.on("error", () => {});
    pair.upstream = upstream;
    for (const chunk of pair.early.splice(0)) upstream.write(chunk);
    this.#relay(pair.client, upstream, false);
    this.#relay(upstream, pair.client, true);
  }

  /**
   * Forwards `from` to `to`, delaying each chunk by delayMs while keeping order; in blackhole
   * mode chunks are held and sent when the mode goes back to pass. A clean close is passed on as
   * FIN only after the queued chunks (so a server's last ErrorResponse, e.g. 57P01, reaches the
   * client), an abortive one as RST. In blackhole mode a closing server is passed on only when
   * the partition heals (`hangs`: a hung host says nothing), a closing client at once.
   */
  #relay(from: Socket, to: Socket, hangs: boolean): void {
    const queue: Array<{ due: number; chunk: Uint8Array }> = [];
    const held: Uint8Array[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ended = false;
    const endIfDrained = (): void => {
      if (ended && queue.length === 0 && held.length === 0 && !to.destroyed) to.end();
    };
    const flush = (): void => {
      timer = undefined;
      const now = Date.now();
      while (queue.length > 0 && queue[0].due <= now) {
        const { chunk } = queue.shift()!;
        if (to.writable) deliver(chunk);
      }
      if (queue.length > 0) timer = setTimeout(flush, queue[0].due - now);
      else endIfDrained();
    };
    // `hangs` marks the server's side: its chunks go to the client.
    const deliver = (chunk: Uint8Array): void => {
      to.write(chunk);
      if (hangs) this.onServerChunk?.(chunk);
    };
    const send = (chunk: Uint8Array): void => {
      if (this.delayMs <= 0 && queue.length === 0) {
        if (to.writable) deliver(chunk);
        return;
      }
      // Never due before the chunk ahead of it, even if delayMs was lowered meanwhile.
      const due = Math.max(Date.now() + Math.max(0, this.delayMs), queue.at(-1)?.due ?? 0);
      queue.push({ due, chunk });
      timer ??= setTimeout(flush, Math.max(0, queue[0].due - Date.now()));
    };
    const heal = (): void => {
      // What TCP held back arrives together once the partition heals: one chunk.
      const chunks = held.splice(0);
      if (chunks.length > 0) send(chunks.length === 1 ? chunks[0] : Buffer.concat(chunks));
      endIfDrained();
    };
    this.#heal.add(heal);
    // The client's bytes after a cut (`cutClientChunk`), until releaseClients().
    let stalled: Uint8Array[] | undefined;
    const release = (): void => {
      const chunks = stalled;
      stalled = undefined;
      for (const chunk of chunks ?? []) send(chunk);
    };
    if (!hangs) {
      this.#release.add(release);
      from.on("close", () => this.#release.delete(release));
    }
    from.on("data", (chunk: Uint8Array) => {
      if (stalled !== undefined) {
        stalled.push(chunk);
        return;
      }
      if (!hangs && this.cutClientChunk !== undefined && this.#mode === "pass") {
        const n = this.cutClientChunk(chunk);
        if (n < chunk.length) {
          stalled = [chunk.subarray(n)];
          if (n > 0) send(chunk.subarray(0, n));
          return;
        }
      }
      if (this.#mode !== "pass") held.push(chunk); // blackhole: held until the partition heals
      else if (hangs && this.holdServerChunk?.(chunk) === true) {
        this.#mode = "blackhole";
        held.push(chunk);
      } else {
        if (held.length > 0) heal();
        send(chunk);
      }
    });
    from.on("close", (hadError: boolean) => {
      if (this.#mode !== "pass") {
        // A hung host says nothing about its side closing; a client closing is passed on.
        if (!hangs) {
          this.#heal.delete(heal);
          to.destroy();
        } else ended = true;
        return;
      }
      this.#heal.delete(heal);
      if (hadError) {
        clearTimeout(timer);
        queue.length = 0;
        held.length = 0;
        reset(to);
        return;
      }
      ended = true;
      endIfDrained();
    });
    to.on("close", () => this.#heal.delete(heal));
  }
}

/** Destroys with a TCP RST (resetAndDestroy: Node 16.17+, Deno 2.9, Bun 1.4), else plainly. */
function reset(s: Socket): void {
  if (s.destroyed) return;
  const r = s as Socket & { resetAndDestroy?: () => void };
  try {
    if (typeof r.resetAndDestroy === "function") return void r.resetAndDestroy();
  } catch {
    // fall through
  }
  s.destroy();
}

/** `endpoint` (a server's config entry) reached through `proxy` instead. */
export function behind<E extends { host: string; port: number }>(proxy: TcpProxy, endpoint: E): E {
  return { ...endpoint, host: proxy.host, port: proxy.port };
}

// A TCP proxy on 127.0.0.1 for fault injection between a client and one server.
import { connect, createServer, type Server, type Socket } from "node:net";

export type ProxyMode = "pass" | "blackhole" | "refuse";

export interface TcpProxy {
  /** Where clients connect. */
  readonly host: string;
  readonly port: number;
  /**
   * pass: relay both ways. blackhole: keep sockets open but drop all data both ways (a hung
   * host; new connections are accepted and never reach the target). refuse: accept and reset
   * at once (a listening socket cannot refuse at TCP level; clients see ECONNRESET rather than
   * ECONNREFUSED); switching to refuse also resets the open connections.
   */
  mode: ProxyMode;
  /** Added latency per chunk, each direction, in pass mode (order is kept). */
  delayMs: number;
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
}

class Proxy implements TcpProxy {
  delayMs = 0;
  #mode: ProxyMode = "pass";
  #port = 0;
  readonly #pairs = new Set<Pair>();
  readonly #server: Server;

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
    const pair: Pair = { client, upstream: undefined };
    this.#pairs.add(pair);
    client.on("close", () => this.#pairs.delete(pair));
    // A connection opened during a blackhole never reaches the target: the server would only
    // see a silent socket and log an incomplete startup packet.
    if (this.#mode === "pass") {
      const upstream = connect(this.target.port, this.target.host);
      upstream.setNoDelay(true);
      upstream.on("error", () => {});
      pair.upstream = upstream;
      this.#relay(client, upstream, false);
      this.#relay(upstream, client, true);
    }
  }

  /**
   * Forwards `from` to `to` in pass mode, delaying each chunk by delayMs while keeping order.
   * A clean close is passed on as FIN only after the queued chunks (so a server's last
   * ErrorResponse, e.g. 57P01, reaches the client), an abortive one as RST. In blackhole mode a
   * closing server is not passed on (`hangs`: a hung host says nothing), a closing client is.
   */
  #relay(from: Socket, to: Socket, hangs: boolean): void {
    const queue: Array<{ due: number; chunk: Uint8Array }> = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    let ended = false;
    const endIfDrained = (): void => {
      if (ended && queue.length === 0 && !to.destroyed) to.end();
    };
    const flush = (): void => {
      timer = undefined;
      const now = Date.now();
      while (queue.length > 0 && queue[0].due <= now) {
        const { chunk } = queue.shift()!;
        if (this.#mode === "pass" && to.writable) to.write(chunk);
      }
      if (queue.length > 0) timer = setTimeout(flush, queue[0].due - now);
      else endIfDrained();
    };
    from.on("data", (chunk: Uint8Array) => {
      if (this.#mode !== "pass") return; // blackhole: drop
      if (this.delayMs <= 0 && queue.length === 0) {
        if (to.writable) to.write(chunk);
        return;
      }
      // Never due before the chunk ahead of it, even if delayMs was lowered meanwhile.
      const due = Math.max(Date.now() + Math.max(0, this.delayMs), queue.at(-1)?.due ?? 0);
      queue.push({ due, chunk });
      timer ??= setTimeout(flush, Math.max(0, queue[0].due - Date.now()));
    });
    from.on("close", (hadError: boolean) => {
      if (this.#mode !== "pass") {
        if (!hangs) to.destroy();
        return;
      }
      if (hadError) {
        clearTimeout(timer);
        queue.length = 0;
        reset(to);
        return;
      }
      ended = true;
      endIfDrained();
    });
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

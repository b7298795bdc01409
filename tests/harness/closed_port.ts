/**
 * A loopback port nothing listens on: connecting to it is refused at once (ECONNREFUSED).
 *
 * @module
 */

import { type AddressInfo, createServer } from "node:net";

/** Binds an ephemeral port, closes it again and resolves to its number. */
export function closedPort(): Promise<number> {
  return new Promise<number>((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

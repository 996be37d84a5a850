// gRPC-Web clients of the gateways (binary protobuf), each call carrying
// `authorization: Bearer <token>` with the token current at that moment.

import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { ChatService, type ClientFrame, type ServerEvent } from "./gen/chat_pb";
import { GrpcCode } from "./lib/codes";
import { codeOf, type SessionApi } from "./lib/session";

export type ChatClient = Client<typeof ChatService>;

/** Unary calls give up after this long. */
const UNARY_TIMEOUT_MS = 15_000;
/** A SendFrames call that takes longer means the gateway is not answering. */
const SEND_FRAMES_TIMEOUT_MS = 10_000;

export class Api implements SessionApi {
  private readonly clients: ChatClient[];
  /** The gateway unary calls go to first: the session's. */
  preferred = 0;

  constructor(
    readonly gateways: readonly string[],
    token: () => string,
  ) {
    const auth: Interceptor = (next) => async (req) => {
      req.header.set("authorization", `Bearer ${token()}`);
      return await next(req);
    };
    this.clients = gateways.map((baseUrl) =>
      createClient(
        ChatService,
        createGrpcWebTransport({ baseUrl, useBinaryFormat: true, interceptors: [auth] }),
      ),
    );
  }

  client(index: number): ChatClient {
    const c = this.clients[index];
    if (!c) throw new Error(`no gateway ${index}`);
    return c;
  }

  openSession(gateway: number, signal: AbortSignal): AsyncIterable<ServerEvent> {
    // No deadline: the stream lives as long as the session.
    return this.client(gateway).openSession({}, { signal, timeoutMs: 0 });
  }

  async sendFrames(gateway: number, sessionId: string, frames: ClientFrame[], signal: AbortSignal): Promise<void> {
    await this.client(gateway).sendFrames({ sessionId, frames }, { signal, timeoutMs: SEND_FRAMES_TIMEOUT_MS });
  }

  /**
   * A unary call on the session's gateway; if that one cannot be reached,
   * once more on each other gateway (any gateway answers unary calls).
   */
  async unary<T>(call: (client: ChatClient, options: { timeoutMs: number }) => Promise<T>): Promise<T> {
    const n = this.clients.length;
    let lastErr: unknown;
    for (let i = 0; i < n; i++) {
      const index = (this.preferred + i) % n;
      try {
        return await call(this.client(index), { timeoutMs: UNARY_TIMEOUT_MS });
      } catch (err) {
        lastErr = err;
        const code = codeOf(err);
        const unreachable = code === GrpcCode.Unavailable || code === GrpcCode.Unknown || code === GrpcCode.DeadlineExceeded;
        if (!unreachable) throw err;
      }
    }
    throw lastErr;
  }
}

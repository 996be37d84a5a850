// The claims the page needs from a bearer token (no verification: the
// gateways verify it).

export interface TokenClaims {
  sub: string;
  /** Expiry, milliseconds since the epoch (0 when the token has none). */
  expiresAtMs: number;
  /** Issued at, milliseconds since the epoch (0 when absent). */
  issuedAtMs: number;
}

function base64UrlDecode(part: string): string {
  let b64 = part.replace(/-/g, "+").replace(/_/g, "/");
  while (b64.length % 4 !== 0) b64 += "=";
  const binary = atob(b64);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** Decodes a JWT's payload; throws on anything that is not a JWT with a `sub`. */
export function decodeToken(token: string): TokenClaims {
  const parts = token.trim().split(".");
  if (parts.length !== 3 || !parts[1]) throw new Error("not a JWT (expected three dot-separated parts)");
  let payload: unknown;
  try {
    payload = JSON.parse(base64UrlDecode(parts[1]));
  } catch {
    throw new Error("the token's payload is not base64url JSON");
  }
  if (typeof payload !== "object" || payload === null) throw new Error("the token's payload is not an object");
  const claims = payload as Record<string, unknown>;
  if (typeof claims.sub !== "string" || claims.sub === "") throw new Error("the token has no subject (sub)");
  const exp = typeof claims.exp === "number" ? claims.exp : 0;
  const iat = typeof claims.iat === "number" ? claims.iat : 0;
  return { sub: claims.sub, expiresAtMs: exp * 1000, issuedAtMs: iat * 1000 };
}

/**
 * When to refresh a token: at 4/5 of its life (from `obtainedAtMs`, or its
 * `iat`), never sooner than `minDelayMs` from now. Undefined when it does not
 * expire.
 */
export function refreshAt(obtainedAtMs: number, expiresAtMs: number, nowMs: number, minDelayMs = 1000): number | undefined {
  if (!expiresAtMs) return undefined;
  const life = expiresAtMs - obtainedAtMs;
  const at = obtainedAtMs + life * 0.8;
  return Math.max(at, nowMs + minDelayMs);
}

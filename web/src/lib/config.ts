// The page's runtime configuration (/config.json) and URL parameters.

export interface AppConfig {
  /** gRPC-Web base URLs of the gateways, in order of preference. */
  gateways: string[];
  /** Development sign-in (a local token endpoint); only the development build has it. */
  devSignIn: boolean;
}

export function parseConfig(value: unknown): AppConfig {
  if (typeof value !== "object" || value === null) throw new Error("config.json is not a JSON object");
  const v = value as Record<string, unknown>;
  const gateways = v.gateways;
  if (!Array.isArray(gateways) || gateways.length === 0 || !gateways.every((g) => typeof g === "string" && g !== "")) {
    throw new Error('config.json: "gateways" must be a non-empty list of URLs');
  }
  return {
    gateways: (gateways as string[]).map((g) => g.replace(/\/+$/, "")),
    devSignIn: v.devSignIn === true,
  };
}

export interface PageParams {
  /** ?user= (development sign-in as this user). */
  user: string | undefined;
  /** ?gateway= as given (the index into gateways; 0-based). */
  gateway: string | undefined;
  /** ?conversation= to open after sign-in. */
  conversation: string | undefined;
  /** #access_token= from an identity provider's redirect. */
  accessToken: string | undefined;
}

export function parseParams(search: string, hash: string): PageParams {
  const q = new URLSearchParams(search.startsWith("?") ? search.slice(1) : search);
  const h = new URLSearchParams(hash.startsWith("#") ? hash.slice(1) : hash);
  const nonEmpty = (s: string | null) => (s === null || s.trim() === "" ? undefined : s.trim());
  return {
    user: nonEmpty(q.get("user")),
    gateway: nonEmpty(q.get("gateway")),
    conversation: nonEmpty(q.get("conversation")),
    accessToken: nonEmpty(h.get("access_token")),
  };
}

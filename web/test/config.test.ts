import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { codeName } from "../src/lib/codes";
import { parseConfig, parseParams } from "../src/lib/config";
import { decodeToken, refreshAt } from "../src/lib/jwt";

function jwt(payload: object): string {
  const b64 = (s: string) => Buffer.from(s).toString("base64url");
  return `${b64(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64(JSON.stringify(payload))}.sig`;
}

describe("config.json", () => {
  it("reads gateways and devSignIn", () => {
    const c = parseConfig({ gateways: ["http://127.0.0.1:50051/", "http://127.0.0.1:50052"], devSignIn: true });
    assert.deepEqual(c, { gateways: ["http://127.0.0.1:50051", "http://127.0.0.1:50052"], devSignIn: true });
    assert.equal(parseConfig({ gateways: ["https://chat.example"] }).devSignIn, false);
  });

  it("refuses a config without gateways", () => {
    assert.throws(() => parseConfig({}));
    assert.throws(() => parseConfig({ gateways: [] }));
    assert.throws(() => parseConfig({ gateways: [1] }));
    assert.throws(() => parseConfig(null));
  });
});

describe("URL parameters", () => {
  it("reads user, gateway, conversation and an access token in the fragment", () => {
    const p = parseParams("?user=alice&gateway=1&conversation=room1", "#access_token=abc.def.ghi&token_type=Bearer");
    assert.deepEqual(p, { user: "alice", gateway: "1", conversation: "room1", accessToken: "abc.def.ghi" });
    assert.deepEqual(parseParams("", ""), {
      user: undefined,
      gateway: undefined,
      conversation: undefined,
      accessToken: undefined,
    });
  });
});

describe("tokens", () => {
  it("takes the user id from sub and the expiry from exp", () => {
    const t = decodeToken(jwt({ sub: "alice", exp: 2_000_000_000, iat: 1_999_996_400 }));
    assert.deepEqual(t, { sub: "alice", expiresAtMs: 2_000_000_000_000, issuedAtMs: 1_999_996_400_000 });
  });

  it("decodes base64url payloads with non-ASCII", () => {
    assert.equal(decodeToken(jwt({ sub: "zoë?>>" })).sub, "zoë?>>");
  });

  it("refuses what is not a JWT with a subject", () => {
    assert.throws(() => decodeToken("nope"));
    assert.throws(() => decodeToken(jwt({ exp: 1 })));
    assert.throws(() => decodeToken("a.!!!.c"));
  });

  it("refreshes at 4/5 of the token's life", () => {
    assert.equal(refreshAt(0, 3_600_000, 0), 2_880_000);
    assert.equal(refreshAt(1000, 11_000, 1000), 9000);
    // Never in the past.
    assert.equal(refreshAt(0, 10_000, 9500), 10_500);
    assert.equal(refreshAt(0, 0, 0), undefined);
  });
});

describe("status codes", () => {
  it("names gRPC codes", () => {
    assert.equal(codeName(5), "NOT_FOUND");
    assert.equal(codeName(16), "UNAUTHENTICATED");
    assert.equal(codeName(99), "CODE_99");
  });
});

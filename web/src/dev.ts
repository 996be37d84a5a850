// Development sign-in: a user name, and a token minted by the local web
// server (`chat serve-web --dev-tokens`). Only the development build has this
// module (main.ts reaches it behind __DEV_SIGNIN__, which the production build
// defines false, so the bundler drops it), and only a config.json with
// "devSignIn": true shows it.

export interface DevToken {
  token: string;
  expiresAtMs: number;
}

/** GET /dev/token?user=NAME from the page's own origin. */
export async function fetchDevToken(user: string): Promise<DevToken> {
  const res = await fetch(`/dev/token?user=${encodeURIComponent(user)}`, { cache: "no-store" });
  if (!res.ok) {
    const why = (await res.text()).trim();
    throw new Error(`development sign-in refused (HTTP ${res.status})${why ? `: ${why}` : ""}`);
  }
  const body = (await res.json()) as { token?: unknown; expires_at_ms?: unknown };
  if (typeof body.token !== "string" || body.token === "") throw new Error("development sign-in: no token in the answer");
  return { token: body.token, expiresAtMs: typeof body.expires_at_ms === "number" ? body.expires_at_ms : 0 };
}

/** Adds the user-name field and its button (input#user, button#signin-submit) to the sign-in form. */
export function mountDevSignIn(form: HTMLFormElement, initialUser: string | undefined): HTMLInputElement {
  const box = document.createElement("div");
  box.className = "dev-signin";
  const label = document.createElement("label");
  label.htmlFor = "user";
  label.textContent = "User name (development sign-in)";
  const row = document.createElement("div");
  row.className = "row";
  const input = document.createElement("input");
  input.id = "user";
  input.name = "user";
  input.autocomplete = "username";
  input.placeholder = "alice";
  input.required = false;
  input.pattern = "[A-Za-z0-9._\\-]{1,64}";
  if (initialUser) input.value = initialUser;
  const button = document.createElement("button");
  button.id = "signin-submit";
  button.type = "submit";
  button.textContent = "Sign in";
  row.append(input, button);
  const hint = document.createElement("p");
  hint.className = "hint";
  hint.textContent = "Tokens minted by the local server: development only.";
  const or = document.createElement("div");
  or.className = "or";
  or.textContent = "or paste a token";
  box.append(label, row, hint);
  form.prepend(box, or);
  return input;
}

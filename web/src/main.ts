// Entry point: configuration, sign-in, then the app.

import { Api } from "./api";
import { ChatApp, errorText, type Auth, type ChatDebug } from "./app";
import { fetchDevToken, mountDevSignIn } from "./dev";
import { parseConfig, parseParams, type AppConfig } from "./lib/config";
import { decodeToken } from "./lib/jwt";
import { preferredGateway } from "./lib/reconnect";
import { Ui } from "./ui";

/** True in the development build only (esbuild `define`). */
declare const __DEV_SIGNIN__: boolean;

declare global {
  interface Window {
    chatDebug: ChatDebug;
  }
}

const TOKEN_KEY = "chat.token";

window.chatDebug = { duplicatesDropped: 0, renderLatencies: [], sessions: 0, sessionId: "" };

function $(id: string): HTMLElement {
  const e = document.getElementById(id);
  if (!e) throw new Error(`#${id} is missing`);
  return e;
}

function banner(text: string): void {
  $("error-text").textContent = text;
  $("error-banner").hidden = false;
}

async function loadConfig(): Promise<AppConfig> {
  // Relative: config.json beside index.html, wherever the files are served.
  const res = await fetch("config.json", { cache: "no-store" });
  if (!res.ok) throw new Error(`config.json: HTTP ${res.status}`);
  return parseConfig(await res.json());
}

async function main(): Promise<void> {
  $("error-dismiss").addEventListener("click", () => {
    $("error-banner").hidden = true;
  });
  const params = parseParams(location.search, location.hash);
  let config: AppConfig;
  try {
    config = await loadConfig();
  } catch (err) {
    banner(`Cannot start: ${errorText(err)}`);
    return;
  }

  const signinView = $("signin-view");
  const appView = $("app-view");
  const form = $("signin") as HTMLFormElement;
  const tokenInput = $("token") as HTMLTextAreaElement;
  let app: ChatApp | undefined;
  let ui: Ui | undefined;

  const showSignIn = (show: boolean) => {
    signinView.hidden = !show;
    if (!app) appView.hidden = show;
  };

  const start = (token: string, expiresAtMs: number, refresh?: Auth["refresh"]) => {
    const claims = decodeToken(token);
    const expires = expiresAtMs || claims.expiresAtMs;
    if (expires && expires <= Date.now()) throw new Error("that token has expired");
    if (app) {
      if (app.replaceToken(token, claims.sub, expires)) showSignIn(false);
      return;
    }
    const auth: Auth = { user: claims.sub, token, expiresAtMs: expires, obtainedAtMs: Date.now() };
    if (refresh) auth.refresh = refresh;
    const api = new Api(config.gateways, () => auth.token);
    ui = new Ui();
    app = new ChatApp(
      api,
      auth,
      ui,
      { now: () => Date.now(), visible: () => document.visibilityState === "visible", newId: () => crypto.randomUUID() },
      preferredGateway(params.gateway, config.gateways.length),
    );
    window.chatDebug = app.debug;
    ui.onSignInRequested = () => {
      signinView.hidden = false;
      tokenInput.focus();
    };
    ui.attach(app);
    $("me").textContent = claims.sub;
    $("me").title = `Signed in as ${claims.sub}`;
    document.title = `${claims.sub} · Chat`;
    signinView.hidden = true;
    appView.hidden = false;
    window.addEventListener("online", () => app?.session.wake());
    window.addEventListener("offline", () => app?.session.dropSession(new Error("the browser went offline")));
    app.start();
    if (params.conversation) app.open(params.conversation);
  };

  let devSignIn: ((user: string) => Promise<void>) | undefined;
  if (__DEV_SIGNIN__ && config.devSignIn) {
    const userInput = mountDevSignIn(form, params.user);
    devSignIn = async (user: string) => {
      if (!user) {
        userInput.focus();
        return;
      }
      const minted = await fetchDevToken(user);
      start(minted.token, minted.expiresAtMs, () => fetchDevToken(user));
    };
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const submitter = (ev as SubmitEvent).submitter;
    if (devSignIn && submitter?.id !== "token-submit") {
      const user = ($("user") as HTMLInputElement).value.trim();
      devSignIn(user).catch((err) => banner(errorText(err)));
      return;
    }
    const token = tokenInput.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    try {
      start(token, 0);
      sessionStorage.setItem(TOKEN_KEY, token);
      tokenInput.value = "";
    } catch (err) {
      banner(`That token cannot be used: ${errorText(err)}`);
    }
  });

  // A token handed over by an identity provider's redirect (#access_token=...).
  if (params.accessToken) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      start(params.accessToken, 0);
      sessionStorage.setItem(TOKEN_KEY, params.accessToken);
      return;
    } catch (err) {
      banner(`The token from the sign-in redirect cannot be used: ${errorText(err)}`);
    }
  }
  if (devSignIn && params.user) {
    devSignIn(params.user).catch((err) => {
      banner(errorText(err));
      showSignIn(true);
    });
    return;
  }
  const saved = sessionStorage.getItem(TOKEN_KEY);
  if (saved) {
    try {
      start(saved, 0);
      return;
    } catch {
      sessionStorage.removeItem(TOKEN_KEY);
    }
  }
  showSignIn(true);
  (devSignIn ? ($("user") as HTMLInputElement) : tokenInput).focus();
}

void main();

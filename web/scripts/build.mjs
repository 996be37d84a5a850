// Bundles the web app with esbuild.
//   node scripts/build.mjs --prod   -> dist/      (no development sign-in)
//   node scripts/build.mjs --dev    -> dist-dev/  (development sign-in included)
// Output: index.html, app.js (+ app.js.map), app.css; minified. The
// production bundle is checked to hold no development sign-in code.
import { createHash } from "node:crypto";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dev = process.argv.includes("--dev");
if (!dev && !process.argv.includes("--prod")) {
  console.error("usage: node scripts/build.mjs --prod|--dev");
  process.exit(2);
}
const outdir = join(root, dev ? "dist-dev" : "dist");

await rm(outdir, { recursive: true, force: true });
await mkdir(outdir, { recursive: true });

const common = {
  bundle: true,
  minify: true,
  charset: "utf8",
  legalComments: "none",
  logLevel: "warning",
  target: ["es2022", "chrome100", "firefox100", "safari15.4"],
};

await esbuild.build({
  ...common,
  entryPoints: [join(root, "src/main.ts")],
  outfile: join(outdir, "app.js"),
  format: "esm",
  platform: "browser",
  sourcemap: dev ? "linked" : "external",
  // Production maps name the sources without carrying them.
  sourcesContent: dev,
  // Production: the development sign-in module is unreachable and dropped.
  define: { __DEV_SIGNIN__: dev ? "true" : "false" },
  // Generated protobuf code is side-effect free: keep only what is used.
  treeShaking: true,
});

await esbuild.build({
  ...common,
  entryPoints: [join(root, "static/app.css")],
  outfile: join(outdir, "app.css"),
  loader: { ".css": "css" },
});

const js = await readFile(join(outdir, "app.js"));
const css = await readFile(join(outdir, "app.css"));
const short = (buf) => createHash("sha256").update(buf).digest("hex").slice(0, 12);
const html = (await readFile(join(root, "static/index.html"), "utf8"))
  .replace("__JS_HASH__", short(js))
  .replace("__CSS_HASH__", short(css));
await writeFile(join(outdir, "index.html"), html);

if (!dev) {
  // The production bundle must not carry development sign-in.
  const text = js.toString("utf8");
  const map = await readFile(join(outdir, "app.js.map"), "utf8");
  for (const needle of ["/dev/token", "signin-submit", "fetchDevToken", "mountDevSignIn"]) {
    if (text.includes(needle) || map.includes(needle)) {
      console.error(`production bundle holds development sign-in code (${JSON.stringify(needle)})`);
      process.exit(1);
    }
  }
}

const kb = (n) => `${(n / 1024).toFixed(1)} KiB`;
console.log(
  `${dev ? "dist-dev" : "dist"}: app.js ${kb(js.length)} (gzip ${kb(gzipSync(js, { level: 9 }).length)}), ` +
    `app.css ${kb(css.length)} (gzip ${kb(gzipSync(css, { level: 9 }).length)}), index.html`,
);

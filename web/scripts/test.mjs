// Unit tests of the pure modules: test/*.test.ts bundled with esbuild into a
// temporary directory, then run by Node's built-in test runner.
import { spawnSync } from "node:child_process";
import { mkdtemp, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tests = (await readdir(join(root, "test"))).filter((f) => f.endsWith(".test.ts")).sort();
if (tests.length === 0) {
  console.error("no tests in test/");
  process.exit(1);
}
const out = await mkdtemp(join(tmpdir(), "chat-web-tests-"));
let status = 1;
try {
  await esbuild.build({
    entryPoints: tests.map((f) => join(root, "test", f)),
    outdir: out,
    outExtension: { ".js": ".mjs" },
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    sourcemap: "inline",
    define: { __DEV_SIGNIN__: "false" },
    // node:test and node:assert stay imports; everything else is bundled.
    external: ["node:*"],
    logLevel: "warning",
  });
  const files = tests.map((f) => join(out, f.replace(/\.ts$/, ".mjs")));
  const run = spawnSync(process.execPath, ["--enable-source-maps", "--test", ...files], { stdio: "inherit" });
  status = run.status ?? 1;
} finally {
  await rm(out, { recursive: true, force: true });
}
process.exit(status);

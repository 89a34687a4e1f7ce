// Runs one end-to-end scenario (e2e/<name>.mjs) in Debian's Chromium through playwright-core.
// Started by the Rust tests (tests/api/browser/), which start the service and the fakes and pass
// their addresses in the environment: BASE_URL, TOKEN and what the scenario names.
//   node e2e/run.mjs <scenario>
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const name = process.argv[2];
if (!name || !/^[a-z-]+$/.test(name)) {
  console.error("usage: node e2e/run.mjs <scenario>");
  process.exit(2);
}
const scenario = (await import(`./${name}.mjs`)).default;
const screenshots = process.env.SCREENSHOT_DIR || join(import.meta.dirname, "output");
mkdirSync(screenshots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH || "/usr/bin/chromium",
  // As root on a CI machine; no background traffic to Google's hosts (the network is closed).
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: "en-US" });
const page = await context.newPage();
page.setDefaultTimeout(Number(process.env.STEP_TIMEOUT_MS || 15000));

// The page must work with nothing but loopback: every other request is a failure.
const external = [];
const pageErrors = [];
context.on("request", (request) => {
  const host = new URL(request.url()).hostname;
  if (!["127.0.0.1", "localhost", "[::1]"].includes(host) && !request.url().startsWith("data:")) {
    external.push(request.url());
  }
});
page.on("pageerror", (error) => pageErrors.push(error.message));
page.on("console", (message) => {
  if (message.type() === "error") console.log(`[browser console] ${message.text()}`);
});

/** Screenshots at desktop width and at a phone's, checking nothing overflows sideways. */
async function shot(label) {
  await page.screenshot({ path: join(screenshots, `${name}-${label}-desktop.png`), fullPage: true });
  const desktop = page.viewportSize();
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(150);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  await page.screenshot({ path: join(screenshots, `${name}-${label}-phone.png`), fullPage: true });
  await page.setViewportSize(desktop);
  assert.ok(overflow <= 0, `${label}: the page is ${overflow}px wider than a phone`);
  console.log(`screenshots: ${join(screenshots, `${name}-${label}-{desktop,phone}.png`)}`);
}

function step(text) {
  console.log(`- ${text}`);
}

let failed = false;
try {
  await scenario({ page, context, env: process.env, shot, step });
  assert.deepEqual(external, [], "the dashboard made requests off this machine");
  assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  console.log(`scenario ${name}: passed`);
} catch (error) {
  failed = true;
  console.error(`scenario ${name}: FAILED\n${error?.stack ?? error}`);
  await page.screenshot({ path: join(screenshots, `${name}-failure.png`), fullPage: true }).catch(() => {});
  console.error(`page at failure: ${page.url()} (screenshot ${join(screenshots, `${name}-failure.png`)})`);
} finally {
  await browser.close();
}
process.exit(failed ? 1 : 0);

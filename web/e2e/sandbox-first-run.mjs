// The first run with no configuration: the payments sandbox. A newcomer signs in, upgrades to
// Pro on the service's own test-mode checkout page, sees the invoice, and cancels in the
// sandbox's billing portal.
import assert from "node:assert/strict";
import { signIn, toast } from "./lib.mjs";

export default async function ({ page, env, shot, step }) {
  step("sign in: the banner says payments are a sandbox");
  await signIn(page, env, env.TOKEN);
  await page.getByTestId("sandbox-banner").filter({ hasText: "test mode, no money moves" }).waitFor();
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();

  step("upgrade: the sandbox's checkout page, marked test mode");
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Go to checkout" }).click();
  await page.waitForURL(/\/sandbox\/checkout\/cs_sandbox_/);
  await page.getByText("Test mode, no money moves.").waitFor();
  await shot("checkout");
  await page.getByRole("button", { name: /^Pay / }).click();

  step("back on Pro, with the invoice paid");
  await page.waitForURL(/\/dashboard\/settings\/billing/);
  await toast(page, "Payment received: you are on Pro now.");
  await page.getByTestId("current-plan").filter({ hasText: "Pro" }).waitFor();
  // The invoice's event may land just after the plan's: reloaded until it is listed.
  await reloadUntil(page, async () => (await page.getByRole("table").getByText("Paid").count()) > 0);

  step("cancel in the sandbox's billing portal");
  await page.getByRole("button", { name: "Manage billing" }).click();
  await page.waitForURL(/\/sandbox\/portal\/bps_sandbox_/);
  await page.getByText("Test mode, no money moves.").waitFor();
  await page.getByRole("button", { name: "Cancel subscription" }).click();
  await page.getByRole("button", { name: "Resume subscription" }).waitFor();
  await page.getByRole("link", { name: "Return" }).click();
  await page.waitForURL(/\/dashboard\/settings\/billing/);
  // The portal's event is applied by the event processor, as Stripe's would be: the page shows
  // it once it has landed (reloaded until then).
  await reloadUntil(page, async () => (await page.getByTestId("renewal").textContent()).startsWith("Cancels on"));
  assert.match(await page.getByTestId("renewal").textContent(), /^Cancels on \w+ \d{1,2}, \d{4}$/);
  await shot("cancelled");
}

/** Reloads the billing page until `done` says yes (an event the processor applies lands). */
async function reloadUntil(page, done) {
  for (let tries = 0; tries < 30; tries++) {
    await page.getByTestId("current-plan").waitFor();
    await page.getByRole("heading", { name: "Invoices" }).waitFor();
    if (await done()) return;
    await page.waitForTimeout(250);
    await page.reload();
  }
  assert.fail("the page never showed what the sandbox's events changed");
}

// A FREE user upgrades to PRO through the hosted checkout (the fake Stripe's page, whose "Pay"
// sends the signed webhooks a moment after the redirect), sees PRO limits, cancels, resumes.
import assert from "node:assert/strict";
import { checkDialogKeyboard, checkLabels, signIn, toast } from "./lib.mjs";

export default async function ({ page, env, shot, step }) {
  step("sign in as a FREE user");
  await signIn(page, env, env.TOKEN);
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();
  await page.getByText("0 of 1", { exact: true }).waitFor();
  await checkLabels(page);
  await shot("free");

  step("keyboard: the upgrade dialog holds focus, Escape closes it");
  await checkDialogKeyboard(page, page.getByRole("button", { name: "Upgrade to Pro" }));

  step("a checkout left without paying: back with ?canceled=true, still FREE");
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Go to checkout" }).click();
  await page.waitForURL(/\/c\/pay\/cs_test_/);
  await page.getByRole("link", { name: "Cancel and return to Nexus Cards" }).click();
  await toast(page, "Checkout canceled: you were not charged.");
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();
  assert.ok(!page.url().includes("canceled=true"), `the outcome stays in the URL: ${page.url()}`);

  step("upgrade: confirm, then pay on the hosted checkout page");
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Go to checkout" }).click();
  await page.waitForURL(/\/c\/pay\/cs_test_/);
  await page.getByRole("button", { name: /^Pay/ }).click();

  step("back with ?success=true: the page waits for the webhook instead of showing FREE");
  await page.waitForURL(/\/dashboard\/settings\/billing/);
  await page.getByText("Confirming your new plan").waitFor();
  await toast(page, "Payment received: you are on Pro now.");
  await page.getByTestId("current-plan").filter({ hasText: "Pro" }).waitFor();
  assert.ok(!page.url().includes("success=true"), `the outcome stays in the URL: ${page.url()}`);

  step("PRO limits: 5 cards, unlimited contacts, 90 days of analytics");
  await page.getByText("0 of 5", { exact: true }).waitFor();
  await page.getByText("0 of Unlimited", { exact: true }).waitFor();
  assert.equal(await page.getByTestId("retention").textContent(), "90 days");
  await page.getByTestId("status-badge").filter({ hasText: "Active" }).waitFor();
  await page.getByTestId("renewal").filter({ hasText: "Renews on" }).waitFor();
  step("the first invoice is listed, paid (after a reload: it may land just after the plan)");
  await page.reload();
  await page.getByRole("table").getByText("Paid").waitFor();
  assert.equal(await page.locator(".toast").count(), 0, "a reload replays the checkout outcome");
  await page.getByTestId("renewal").filter({ hasText: "Renews on" }).waitFor();
  await shot("pro");

  step("a plan change once subscribed: ChangePlan, no checkout");
  await page.getByRole("button", { name: "Upgrade to Premium" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Switch to Premium" }).click();
  await toast(page, "Your plan is now Premium.");
  await page.getByTestId("current-plan").filter({ hasText: "Premium" }).waitFor();
  await page.getByText("0 of Unlimited", { exact: true }).first().waitFor();
  assert.equal(await page.getByTestId("retention").textContent(), "Unlimited");
  assert.match(page.url(), /\/dashboard\/settings\/billing$/);

  step("cancel at period end");
  await page.getByRole("button", { name: "Cancel subscription" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Cancel subscription" }).click();
  await toast(page, "Your subscription is canceled");
  await page.getByTestId("renewal").filter({ hasText: "Cancels on" }).waitFor();
  const cancels = await page.getByTestId("renewal").textContent();
  assert.match(cancels, /^Cancels on \w+ \d{1,2}, \d{4}$/);
  await shot("canceling");

  step("resume");
  await page.getByRole("button", { name: "Resume subscription" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Resume subscription" }).click();
  await toast(page, "Your subscription is back on");
  await page.getByTestId("renewal").filter({ hasText: "Renews on" }).waitFor();

  step("the activity tells the story, newest first (ListActivity)");
  await page.reload();
  const activity = page.getByTestId("activity");
  await activity.getByText(/subscription will renew$/).first().waitFor();
  const lines = await activity.locator("li span").allTextContents();
  const started = lines.indexOf("Pro subscription started");
  const changed = lines.indexOf("plan changed from Pro to Premium");
  assert.ok(started >= 0 && changed >= 0, `missing entries: ${lines}`);
  assert.ok(changed < started, `not newest first: ${lines}`);
}

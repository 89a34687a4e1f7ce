// Choosing how to pay: a yearly checkout in euros by card (the prices Stripe holds, "2 months
// free"), then, for another user, M-Pesa: a bad phone number refused on the page, a request
// cancelled at the phone (the page follows it live and says so), and one paid.
import assert from "node:assert/strict";
import { checkLabels, signIn, toast } from "./lib.mjs";

export default async function ({ page, env, shot, step }) {
  step("sign in; the yearly prices in euros");
  await signIn(page, env, env.TOKEN);
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();
  await page.getByLabel("Yearly").check();
  await page.getByLabel("Currency").selectOption("eur");
  // The euro prices replace the dollar ones once ListPlans answers for "eur".
  const pro = page.getByTestId("price-pro");
  await pro.filter({ hasText: "€" }).waitFor();
  assert.match(await pro.textContent(), /^€85\.00 \/ year$/);
  await page.getByText("2 months free").first().waitFor();
  await checkLabels(page);
  await shot("yearly-eur");

  step("the yearly euro checkout by card");
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  const dialog = page.getByRole("dialog");
  assert.match(await dialog.getByTestId("checkout-price").textContent(), /85\.00.*per year/);
  // M-Pesa buys 30 days at a time: a yearly price is paid by card only, no choice to make.
  assert.equal(await dialog.getByRole("radio").count(), 0);
  await dialog.getByRole("button", { name: "Go to checkout" }).click();
  await page.waitForURL(/\/c\/pay\/cs_test_/);
  await page.getByRole("link", { name: "Cancel and return to Nexus Cards" }).click();
  await toast(page, "Checkout canceled: you were not charged.");

  step("M-Pesa for another user: the phone number is checked on the page");
  await page.getByRole("button", { name: "Sign out" }).click();
  await signIn(page, env, env.MPESA_TOKEN);
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();
  await page.getByLabel("Monthly").check();
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  await page.getByRole("dialog").getByLabel(/M-Pesa/).check();
  await page.getByLabel("M-Pesa phone number").fill("0812 345");
  await page.getByRole("button", { name: "Send the payment request" }).click();
  await page.getByRole("alert").filter({ hasText: "Kenyan mobile number" }).waitFor();

  step("cancelled at the phone: the page follows the request and says so");
  await page.getByLabel("M-Pesa phone number").fill("0712 345 678");
  await page.getByRole("button", { name: "Send the payment request" }).click();
  await page.getByTestId("mpesa-status").filter({ hasText: "Check your phone" }).waitFor();
  await shot("mpesa-waiting");
  await page.getByTestId("mpesa-status").filter({ hasText: "cancelled on your phone" }).waitFor({ timeout: 30000 });
  await page.getByTestId("mpesa-status").filter({ hasText: "Reason: the payment was cancelled on the phone" }).waitFor();
  await page.getByRole("dialog").getByRole("button", { name: "Close" }).click();
  await page.getByTestId("current-plan").filter({ hasText: "Free" }).waitFor();

  step("paid at the phone: the plan is on");
  await page.getByRole("button", { name: "Upgrade to Pro" }).click();
  await page.getByRole("dialog").getByLabel(/M-Pesa/).check();
  await page.getByLabel("M-Pesa phone number").fill("+254 712 345 678");
  await page.getByRole("button", { name: "Send the payment request" }).click();
  await toast(page, "Payment received: you are on Pro now.");
  await page.getByTestId("current-plan").filter({ hasText: "Pro" }).waitFor();
  await shot("mpesa-paid");
}

// What a user meets when things go wrong: a token that expires, a past-due subscription,
// connections in trouble, the service out of reach. Also the invoice pages.
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { signIn } from "./lib.mjs";

/** An HS256 token for `user` that ends `seconds` from now (the test's secret). */
function shortLivedToken(env, seconds) {
  const now = Math.floor(Date.now() / 1000);
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const unsigned = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: env.USER, iat: now, exp: now + seconds })}`;
  const signature = createHmac("sha256", env.JWT_SECRET).update(unsigned).digest("base64url");
  return { token: `${unsigned}.${signature}`, expiresAt: (now + seconds) * 1000 };
}

export default async function ({ page, env, shot, step }) {
  step("a token that expires during the session: the next call asks for a new one");
  const { token, expiresAt } = shortLivedToken(env, 5);
  await signIn(page, env, token);
  await page.getByTestId("current-plan").filter({ hasText: "Pro" }).waitFor();
  await page.waitForTimeout(Math.max(0, expiresAt - Date.now()) + 1200);
  await page.getByRole("link", { name: "Integrations" }).click();
  await page.getByText("Your session has expired or the token was refused").waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem("nexus.token")), null, "the refused token is forgotten");

  step("an expired token pasted in: refused the same way");
  await page.getByLabel("Access token").fill(env.EXPIRED_TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByText("Your session has expired or the token was refused").waitFor();
  await page.getByLabel("Access token").fill(env.TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("link", { name: "Billing" }).click();

  step("a past-due subscription: a warning with the open invoice");
  await page.getByTestId("status-badge").filter({ hasText: "Past due" }).waitFor();
  const warning = page.getByTestId("past-due");
  await warning.waitFor();
  const link = warning.getByRole("link", { name: "Pay the open invoice" });
  assert.equal(await link.getAttribute("href"), env.OPEN_INVOICE_URL);
  await warning.getByRole("button", { name: "Open the billing portal" }).waitFor();
  step("the dunning banner says until when the plan stays on (PAST_DUE_GRACE after the failure)");
  const grace = await warning.getByTestId("grace-ends").textContent();
  assert.match(grace, /^Your Pro plan stays on until \w+ \d{1,2}, \d{4};/);
  assert.ok(grace.includes(env.GRACE_ENDS), `${grace} does not name ${env.GRACE_ENDS}`);
  await shot("past-due");

  step("invoices a page at a time");
  const rows = page.getByRole("table").locator("tbody tr");
  await page.getByRole("button", { name: "Show older invoices" }).waitFor();
  assert.equal(await rows.count(), 10);
  await page.getByRole("button", { name: "Show older invoices" }).click();
  await page.waitForFunction(() => document.querySelectorAll("table tbody tr").length === 12);
  assert.equal(await page.getByRole("button", { name: "Show older invoices" }).count(), 0);

  step("connections in trouble: Error with its reason, Needs re-authorisation with Reconnect");
  await page.getByRole("link", { name: "Integrations" }).click();
  const hubspot = page.locator('[data-provider="hubspot"]');
  await hubspot.getByTestId("integration-status").filter({ hasText: "Error" }).waitFor();
  await hubspot.getByText("HubSpot refused the token (401)").waitFor();
  const salesforce = page.locator('[data-provider="salesforce"]');
  await salesforce.getByTestId("integration-status").filter({ hasText: "Needs re-authorisation" }).waitFor();
  await salesforce.getByRole("button", { name: "Reconnect Salesforce" }).waitFor();
  // Health says what the user can do.
  await salesforce.getByTestId("integration-health").filter({ hasText: "Needs attention" }).waitFor();
  await salesforce.getByText("connect it again to fix it").waitFor();
  await shot("connections-in-trouble");
  await page.getByRole("link", { name: "Billing" }).click();

  step("the service out of reach: a clear message, then Try again works");
  const grpc = `${env.GRPC_URL}/**`;
  await page.route(grpc, (route) => route.abort("connectionrefused"));
  await page.reload();
  await page.getByText("The billing service cannot be reached").waitFor();
  await shot("unreachable");
  await page.unroute(grpc);
  await page.getByRole("button", { name: "Try again" }).click();
  await page.getByTestId("current-plan").filter({ hasText: "Pro" }).waitFor();
}

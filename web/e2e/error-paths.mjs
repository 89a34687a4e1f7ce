// What a user meets when things go wrong: an expired token, a past-due subscription, the
// service out of reach.
import assert from "node:assert/strict";
import { signIn } from "./lib.mjs";

export default async function ({ page, env, shot, step }) {
  step("an expired token: the page asks for a new one");
  await signIn(page, env, env.EXPIRED_TOKEN);
  await page.getByText("Your session has expired or the token was refused").waitFor();
  await page.getByLabel("Access token").fill(env.TOKEN);
  await page.getByRole("button", { name: "Sign in" }).click();

  step("a past-due subscription: a warning with the open invoice");
  await page.getByTestId("status-badge").filter({ hasText: "Past due" }).waitFor();
  const warning = page.getByTestId("past-due");
  await warning.waitFor();
  const link = warning.getByRole("link", { name: "Pay the open invoice" });
  assert.equal(await link.getAttribute("href"), env.OPEN_INVOICE_URL);
  await warning.getByRole("button", { name: "Open the billing portal" }).waitFor();
  await shot("past-due");

  step("connections in trouble: Error with its reason, Needs re-authorisation with Reconnect");
  await page.getByRole("link", { name: "Integrations" }).click();
  const hubspot = page.locator('[data-provider="hubspot"]');
  await hubspot.getByTestId("integration-status").filter({ hasText: "Error" }).waitFor();
  await hubspot.getByText("HubSpot refused the token (401)").waitFor();
  const salesforce = page.locator('[data-provider="salesforce"]');
  await salesforce.getByTestId("integration-status").filter({ hasText: "Needs re-authorisation" }).waitFor();
  await salesforce.getByRole("button", { name: "Reconnect Salesforce" }).waitFor();
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

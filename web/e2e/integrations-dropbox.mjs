// Connect Dropbox through the OAuth button: the browser-bound start, the fake authorization
// server's consent page, the callback, back on the page with Dropbox active.
import { signIn, toast } from "./lib.mjs";

export default async function ({ page, env, step }) {
  await signIn(page, env, env.TOKEN, "integrations");
  const card = page.locator('[data-provider="dropbox"]');
  await card.getByRole("button", { name: "Connect Dropbox" }).click();
  step("Connect with Dropbox goes to the provider's consent page");
  await page.getByRole("dialog").getByRole("button", { name: "Connect with Dropbox" }).click();
  await page.waitForURL(/\/authorize\?/);
  step("allow: back on the integrations page, connected");
  await page.getByRole("button", { name: "Allow" }).click();
  await page.waitForURL(/\/dashboard\/integrations/);
  await toast(page, "Connected to dropbox.");
  await card.getByTestId("integration-status").filter({ hasText: "Active" }).waitFor();
}

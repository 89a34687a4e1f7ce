// Connect HubSpot with a key (a rejected one first), sync with live progress to 100 %, change
// the interval, disconnect.
import assert from "node:assert/strict";
import { checkLabels, signIn, toast } from "./lib.mjs";

export default async function ({ page, env, shot, step }) {
  await signIn(page, env, env.TOKEN, "integrations");
  const card = page.locator('[data-provider="hubspot"]');
  await card.getByRole("button", { name: "Connect HubSpot" }).click();
  const dialog = page.getByRole("dialog");
  const key = dialog.getByLabel("Private app access token");
  assert.equal(await key.getAttribute("type"), "password", "the secret is typed in a password input");
  await checkLabels(page);

  step("a rejected key: the field shows HubSpot's reason");
  await key.fill("pat-na1-not-a-real-token");
  await dialog.getByRole("button", { name: "Connect", exact: true }).click();
  await dialog.getByTestId("field-error").filter({ hasText: "Authentication credentials not found" }).waitFor();
  assert.equal(await key.getAttribute("aria-invalid"), "true");
  await shot("rejected-key");

  step("the right key: Active");
  await key.fill(env.HUBSPOT_TOKEN);
  await dialog.getByRole("button", { name: "Connect", exact: true }).click();
  await toast(page, "HubSpot is connected.");
  await card.getByTestId("integration-status").filter({ hasText: "Active" }).waitFor();
  await card.getByTestId("integration-health").filter({ hasText: "Healthy" }).waitFor();

  step("sync: the progress bar moves to 100 %");
  await card.getByRole("button", { name: "Sync HubSpot now" }).click();
  // The second batch waits at HubSpot until this page has shown the progress between 0 and
  // 100 %; then the scenario lets it go (RELEASE_URL). No timing is involved.
  const seen = new Set();
  let released = false;
  const deadline = Date.now() + 120000;
  for (;;) {
    const text = await card.getByTestId("sync-percent").textContent().catch(() => null);
    if (text) seen.add(text);
    if (text === "100 %") break;
    if (!released && text && text !== "0 %") {
      const answer = await fetch(env.RELEASE_URL, { method: "POST" });
      assert.equal(answer.status, 204, "the fake HubSpot did not release the batch");
      released = true;
    }
    assert.ok(Date.now() < deadline, `the sync did not finish; seen ${[...seen]}`);
    await page.waitForTimeout(50);
  }
  const between = [...seen].filter((t) => t !== "0 %" && t !== "100 %");
  assert.ok(between.length > 0, `no progress between 0 and 100 %: ${[...seen]}`);
  console.log(`  progress seen: ${[...seen].join(", ")}`);
  const result = card.getByTestId("sync-result");
  await result.filter({ hasText: `${Number(env.CONTACTS) - 1} of ${env.CONTACTS} contacts synced, 1 refused by HubSpot.` }).waitFor();
  console.log(`  result: ${await result.locator("p").first().textContent()}`);
  step("the refused record is listed with HubSpot's reason");
  await result.getByText("Refused records (1)").click();
  await result.getByRole("listitem").filter({ hasText: env.REFUSED }).waitFor();
  await card.getByTestId("last-sync").filter({ hasText: "Last synced" }).waitFor();
  await shot("synced");

  step("change the interval");
  await card.getByRole("button", { name: "HubSpot settings" }).click();
  await dialog.getByLabel("Sync every (seconds)").fill("3600");
  await dialog.getByRole("button", { name: "Save" }).click();
  await toast(page, "HubSpot settings saved.");
  await card.getByRole("button", { name: "HubSpot settings" }).click();
  assert.equal(await dialog.getByLabel("Sync every (seconds)").inputValue(), "3600");
  await dialog.getByRole("button", { name: "Cancel" }).click();

  step("disconnect");
  await card.getByRole("button", { name: "Disconnect HubSpot" }).click();
  await page.getByRole("dialog").getByRole("button", { name: "Disconnect", exact: true }).click();
  await toast(page, "HubSpot is disconnected.");
  await card.getByRole("button", { name: "Connect HubSpot" }).waitFor();

  step("the activity lists the connection and its end, newest first (ListActivity)");
  const activity = page.getByTestId("activity");
  await activity.getByText("Disconnected HubSpot").waitFor();
  const lines = await activity.locator("li span").allTextContents();
  const connected = lines.indexOf("Connected HubSpot");
  assert.ok(connected > lines.indexOf("Disconnected HubSpot"), `not newest first: ${lines}`);
}

// Steps the scenarios share.
import assert from "node:assert/strict";

/** Opens `path` of the dashboard and signs in with `token` through the form. */
export async function signIn(page, env, token, path = "settings/billing") {
  await page.goto(new URL(path, env.BASE_URL).toString());
  await page.getByLabel("Access token").fill(token);
  await page.getByRole("button", { name: "Sign in" }).click();
}

/** Waits for a toast with this text. */
export async function toast(page, text) {
  await page.locator(".toast").filter({ hasText: text }).first().waitFor();
}

/** Keyboard use of a dialog: focus starts inside, Tab never leaves it, Escape closes it and
 * focus goes back to the button that opened it. */
export async function checkDialogKeyboard(page, opener) {
  await opener.focus();
  await page.keyboard.press("Enter");
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  for (let i = 0; i < 8; i++) {
    const inside = await page.evaluate(() => !!document.activeElement?.closest("dialog[open]"));
    assert.ok(inside, `focus left the dialog after ${i} Tab presses`);
    await page.keyboard.press("Tab");
  }
  await page.keyboard.press("Escape");
  await dialog.waitFor({ state: "detached" });
  const back = await opener.evaluate((el) => el === document.activeElement);
  assert.ok(back, "focus did not return to the button that opened the dialog");
}

/** Every form control on the page has an accessible name. */
export async function checkLabels(page) {
  const unlabelled = await page.evaluate(() =>
    [...document.querySelectorAll("input, select, textarea, button, progress")]
      .filter((el) => {
        const labels = el.labels ? el.labels.length : 0;
        return !labels && !el.getAttribute("aria-label") && !el.getAttribute("aria-labelledby") && !el.textContent?.trim();
      })
      .map((el) => el.outerHTML.slice(0, 80)),
  );
  assert.deepEqual(unlabelled, [], "controls without a label");
}

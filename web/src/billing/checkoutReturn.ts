// Coming back from the hosted checkout: the redirect arrives before Stripe's webhook, so the
// page remembers which tier was bought and waits for the subscription to show it.
import { SubscriptionStatus, Tier, type Subscription } from "../gen/nexus/billing/v1/billing_pb";

const KEY = "nexus.checkout.tier";

export function rememberCheckout(tier: Tier): void {
  sessionStorage.setItem(KEY, String(tier));
}

export function pendingCheckoutTier(): Tier | null {
  const value = Number(sessionStorage.getItem(KEY));
  return value === Tier.PRO || value === Tier.PREMIUM ? value : null;
}

export function forgetCheckout(): void {
  sessionStorage.removeItem(KEY);
}

/** `?success=true` / `?canceled=true` on this page's URL. */
export function checkoutOutcome(): "success" | "canceled" | null {
  const query = new URLSearchParams(window.location.search);
  if (query.get("success") === "true") return "success";
  if (query.get("canceled") === "true") return "canceled";
  return null;
}

/** Drops the checkout parameters so a reload does not replay the outcome. */
export function clearOutcome(): void {
  const url = new URL(window.location.href);
  url.searchParams.delete("success");
  url.searchParams.delete("canceled");
  url.searchParams.delete("session_id");
  window.history.replaceState(null, "", url.pathname + url.search + url.hash);
}

/** Whether the subscription now reflects the purchase. */
export function purchaseLanded(sub: Subscription | undefined, wanted: Tier | null): boolean {
  if (!sub) return false;
  const live = sub.status === SubscriptionStatus.ACTIVE || sub.status === SubscriptionStatus.TRIALING;
  return live && (wanted === null ? sub.tier !== Tier.FREE : sub.tier === wanted);
}

/** A subscription the user pays for now (plan changes go through ChangePlan, not checkout). */
export function hasPaidSubscription(sub: Subscription | undefined): boolean {
  if (!sub || sub.tier === Tier.FREE || sub.tier === Tier.UNSPECIFIED) return false;
  return sub.status !== SubscriptionStatus.CANCELED && sub.status !== SubscriptionStatus.INCOMPLETE_EXPIRED;
}

// /dashboard/settings/billing: the plan, usage, the three tiers, the invoices and the activity.
import { useCallback, useEffect, useRef, useState } from "react";
import {
  BillingInterval,
  type GetUsageResponse,
  type Plan,
  type Subscription,
} from "../gen/nexus/billing/v1/billing_pb";
import { useSession } from "../context";
import { useToast } from "../components/Toasts";
import { ErrorPanel } from "../components/ErrorPanel";
import {
  checkoutOutcome,
  clearOutcome,
  forgetCheckout,
  pendingCheckoutTier,
  purchaseLanded,
} from "./checkoutReturn";
import { ActivityList } from "../components/ActivityList";
import { InvoiceList } from "./InvoiceList";
import { tierName } from "./labels";
import { PlanSummary } from "./PlanSummary";
import { TierCards } from "./TierCards";
import { UsagePanel } from "./UsagePanel";

interface Loaded {
  plans: Plan[];
  /** The currency the prices are in, and every one they can be bought in. */
  currency: string;
  currencies: string[];
  subscription?: Subscription;
  usage?: GetUsageResponse;
}

/** How long the page waits for the webhook after a successful checkout. */
const CONFIRM_TIMEOUT_MS = 60_000;
const CONFIRM_POLL_MS = 1_000;

export function BillingPage() {
  const { api, explain } = useSession();
  const toast = useToast();
  const [data, setData] = useState<Loaded | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const [invoicesVersion, setInvoicesVersion] = useState(0);
  const [interval, setBillingInterval] = useState<BillingInterval>(BillingInterval.MONTH);
  const [currency, setCurrency] = useState("");
  const handled = useRef(false);

  const load = useCallback(async () => {
    const [plans, sub, usage] = await Promise.all([
      api.billing.listPlans({ currency }),
      api.billing.getSubscription({}),
      api.billing.getUsage({}),
    ]);
    const loaded = {
      plans: plans.plans,
      currency: plans.currency,
      currencies: plans.currencies,
      subscription: sub.subscription,
      usage,
    };
    setData(loaded);
    setError(null);
    return loaded;
  }, [api, currency]);

  const refresh = useCallback(() => {
    load().catch((e: unknown) => setError(explain(e)));
    setInvoicesVersion((v) => v + 1);
  }, [load]);

  useEffect(() => {
    let stopped = false;
    const outcome = handled.current ? null : checkoutOutcome();
    handled.current = true;
    (async () => {
      try {
        let loaded = await load();
        if (outcome === "canceled") {
          forgetCheckout();
          clearOutcome();
          toast("info", "Checkout canceled: you were not charged.");
        }
        if (outcome !== "success") return;
        const wanted = pendingCheckoutTier();
        setConfirming(true);
        const deadline = Date.now() + CONFIRM_TIMEOUT_MS;
        while (!stopped && !purchaseLanded(loaded.subscription, wanted) && Date.now() < deadline) {
          await new Promise((r) => setTimeout(r, CONFIRM_POLL_MS));
          loaded = await load();
        }
        if (stopped) return;
        setConfirming(false);
        if (purchaseLanded(loaded.subscription, wanted)) {
          forgetCheckout();
          clearOutcome();
          setInvoicesVersion((v) => v + 1);
          toast("success", `Payment received: you are on ${tierName(loaded.subscription!.tier)} now.`);
        } else {
          toast("info", "Your payment is still being confirmed. This page will show your new plan once it is.");
        }
      } catch (e) {
        if (!stopped) {
          setConfirming(false);
          setError(explain(e));
        }
      }
    })();
    return () => {
      stopped = true;
    };
  }, [load]);

  if (error && !data) {
    return <ErrorPanel title="Billing" message={error} onRetry={refresh} />;
  }
  if (!data) {
    return (
      <section aria-busy="true">
        <h1>Billing</h1>
        <p role="status">Loading your plan…</p>
      </section>
    );
  }
  return (
    <div className="page">
      <h1>Billing</h1>
      {error && <ErrorPanel message={error} onRetry={refresh} compact />}
      {confirming && (
        <p className="notice notice-info" role="status">
          Payment received. Confirming your new plan with the payment provider…
        </p>
      )}
      <PlanSummary subscription={data.subscription} confirming={confirming} onChanged={refresh} />
      <UsagePanel usage={data.usage} onChanged={refresh} />
      <div className="billing-choices" role="group" aria-label="How prices are shown">
        <fieldset className="segmented">
          <legend>Billing period</legend>
          {[
            [BillingInterval.MONTH, "Monthly"],
            [BillingInterval.YEAR, "Yearly"],
          ].map(([value, label]) => (
            <label key={value}>
              <input
                type="radio"
                name="interval"
                checked={interval === value}
                onChange={() => setBillingInterval(value as BillingInterval)}
              />
              {label}
            </label>
          ))}
        </fieldset>
        {data.currencies.length > 1 && (
          <label className="currency">
            Currency
            <select value={data.currency} onChange={(e) => setCurrency(e.target.value)}>
              {data.currencies.map((c) => (
                <option key={c} value={c}>
                  {c.toUpperCase()}
                </option>
              ))}
            </select>
          </label>
        )}
      </div>
      <TierCards
        plans={data.plans}
        subscription={data.subscription}
        interval={interval}
        currency={currency}
        disabled={confirming}
        onChanged={refresh}
      />
      <InvoiceList version={invoicesVersion} />
      <ActivityList kinds={["subscription.", "payment.", "invoice."]} version={invoicesVersion} />
    </div>
  );
}

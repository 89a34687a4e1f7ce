// The three tiers from ListPlans at the chosen interval and currency, with upgrade and downgrade
// behind a confirmation: the checkout dialog (card, PayPal or M-Pesa) for a first subscription,
// ChangePlan after, cancellation for a move to Free.
import { useState } from "react";
import { BillingInterval, Tier, type Plan, type Subscription } from "../gen/nexus/billing/v1/billing_pb";
import { ConfirmDialog } from "../components/Modal";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { count, date, money } from "../format";
import { CheckoutDialog } from "./CheckoutDialog";
import { hasPaidSubscription } from "./checkoutReturn";
import { TIER_ORDER, tierName } from "./labels";

interface Props {
  plans: Plan[];
  subscription?: Subscription;
  interval: BillingInterval;
  currency: string;
  disabled: boolean;
  onChanged: () => void;
}

/** The plan's price at `interval`, or its monthly one when it is not sold that way. */
export function priceAt(plan: Plan, interval: BillingInterval) {
  return plan.prices.find((p) => p.interval === interval) ?? plan.prices.find((p) => p.interval === BillingInterval.MONTH);
}

export function TierCards({ plans, subscription, interval, currency, disabled, onChanged }: Props) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [target, setTarget] = useState<Plan | null>(null);
  const [busy, setBusy] = useState(false);
  const paid = hasPaidSubscription(subscription);
  const current = paid ? (subscription?.tier ?? Tier.FREE) : Tier.FREE;
  const rank = (tier: Tier) => TIER_ORDER.indexOf(tier);
  const sorted = [...plans].sort((a, b) => rank(a.tier) - rank(b.tier));

  const change = async (plan: Plan) => {
    setBusy(true);
    try {
      if (plan.tier === Tier.FREE) {
        const answer = await api.billing.cancelSubscription({});
        toast("success", `You move to Free on ${date(answer.subscription?.currentPeriodEnd)}.`);
        onChanged();
      } else {
        const answer = await api.billing.changePlan({ tier: plan.tier, interval });
        if (answer.approvalUrl) {
          // PayPal asks the payer to approve the new plan on its own page.
          window.location.assign(answer.approvalUrl);
          return;
        }
        toast("success", `Your plan is now ${tierName(plan.tier)}.`);
        onChanged();
      }
    } catch (e) {
      toast("error", explain(e));
    }
    setBusy(false);
    setTarget(null);
  };

  return (
    <section aria-labelledby="tiers-title">
      <h2 id="tiers-title">Plans</h2>
      <ul className="tiers">
        {sorted.map((plan) => {
          const isCurrent = plan.tier === current;
          const up = rank(plan.tier) > rank(current);
          const l = plan.limits;
          const price = priceAt(plan, interval);
          const free = Number(plan.price?.amountMinor ?? 0) === 0 && !price;
          return (
            <li key={plan.tier} className={`card tier${isCurrent ? " tier-current" : ""}`} aria-current={isCurrent ? "true" : undefined}>
              <h3>{plan.name || tierName(plan.tier)}</h3>
              <p className="price" data-testid={`price-${tierName(plan.tier).toLowerCase()}`}>
                {free ? "Free" : money(price?.amount ?? plan.price)}
                {!free && <span> / {price?.interval === BillingInterval.YEAR ? "year" : "month"}</span>}
              </p>
              {price?.saving && <p className="saving">{price.saving}</p>}
              {!free && interval === BillingInterval.YEAR && price?.interval !== BillingInterval.YEAR && (
                <p className="hint">Sold monthly only</p>
              )}
              {l && (
                <ul className="limits">
                  <li>{count(l.cards, "card")}</li>
                  <li>{count(l.contacts, "contact")}</li>
                  <li>
                    {Number(l.analyticsRetentionDays) < 0 ? "Unlimited" : `${l.analyticsRetentionDays} days of`} analytics
                  </li>
                </ul>
              )}
              {isCurrent && paid && subscription?.interval && subscription.interval !== interval && price?.interval === interval ? (
                <button type="button" disabled={disabled} onClick={() => setTarget(plan)}>
                  {interval === BillingInterval.YEAR ? "Switch to yearly billing" : "Switch to monthly billing"}
                </button>
              ) : isCurrent ? (
                <button type="button" disabled>
                  Your plan
                </button>
              ) : (
                <button
                  type="button"
                  className={up ? "primary" : undefined}
                  disabled={disabled || (plan.tier === Tier.FREE && !!subscription?.cancelAtPeriodEnd)}
                  onClick={() => setTarget(plan)}
                >
                  {up ? `Upgrade to ${tierName(plan.tier)}` : `Downgrade to ${tierName(plan.tier)}`}
                </button>
              )}
            </li>
          );
        })}
      </ul>
      {target && !paid && target.tier !== Tier.FREE && (
        <CheckoutDialog
          plan={target}
          interval={interval}
          currency={currency}
          onClose={() => setTarget(null)}
          onPaid={() => {
            setTarget(null);
            onChanged();
          }}
        />
      )}
      {target && (paid || target.tier === Tier.FREE) && (
        <ConfirmDialog
          title={`${rank(target.tier) > rank(current) ? "Upgrade" : "Downgrade"} to ${tierName(target.tier)}?`}
          message={<ChangeMessage plan={target} interval={interval} />}
          confirmLabel={`Switch to ${tierName(target.tier)}`}
          busy={busy}
          onConfirm={() => change(target)}
          onClose={() => setTarget(null)}
        />
      )}
    </section>
  );
}

function ChangeMessage({ plan, interval }: { plan: Plan; interval: BillingInterval }) {
  if (plan.tier === Tier.FREE) {
    return <p>Your subscription is canceled at the end of this period; you keep your plan until then.</p>;
  }
  const price = priceAt(plan, interval);
  return (
    <p>
      Your subscription moves to {tierName(plan.tier)} ({money(price?.amount ?? plan.price)} per{" "}
      {price?.interval === BillingInterval.YEAR ? "year" : "month"}) now; the difference is prorated on your next
      invoice.
    </p>
  );
}

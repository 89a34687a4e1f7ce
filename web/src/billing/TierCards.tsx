// The three tiers from ListPlans, with upgrade and downgrade behind a confirmation: checkout for
// a first subscription, ChangePlan after, cancellation for a move to Free.
import { useState } from "react";
import { PaymentProvider, Tier, type Plan, type Subscription } from "../gen/nexus/billing/v1/billing_pb";
import { ConfirmDialog } from "../components/Modal";
import { useToast } from "../components/Toasts";
import { BILLING_PATH } from "../paths";
import { useSession } from "../context";
import { count, date, money } from "../format";
import { hasPaidSubscription, rememberCheckout } from "./checkoutReturn";
import { TIER_ORDER, tierName } from "./labels";

interface Props {
  plans: Plan[];
  subscription?: Subscription;
  disabled: boolean;
  onChanged: () => void;
}

export function TierCards({ plans, subscription, disabled, onChanged }: Props) {
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
      } else if (!paid) {
        const back = `${window.location.origin}${BILLING_PATH}`;
        // Stripe when it sells the tier, else PayPal (both send the browser to a page).
        const offered = plan.offers.map((o) => o.provider);
        const provider = offered.includes(PaymentProvider.STRIPE) || !offered.includes(PaymentProvider.PAYPAL)
          ? PaymentProvider.STRIPE
          : PaymentProvider.PAYPAL;
        const session = await api.billing.createCheckoutSession({
          tier: plan.tier,
          provider,
          successUrl: `${back}?success=true`,
          cancelUrl: `${back}?canceled=true`,
        });
        rememberCheckout(plan.tier);
        window.location.assign(session.url);
        return;
      } else {
        const answer = await api.billing.changePlan({ tier: plan.tier });
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
          return (
            <li key={plan.tier} className={`card tier${isCurrent ? " tier-current" : ""}`} aria-current={isCurrent ? "true" : undefined}>
              <h3>{plan.name || tierName(plan.tier)}</h3>
              <p className="price">
                {Number(plan.price?.amountMinor ?? 0) === 0 ? "Free" : money(plan.price)}
                {Number(plan.price?.amountMinor ?? 0) > 0 && plan.interval && <span> / {plan.interval}</span>}
              </p>
              {l && (
                <ul className="limits">
                  <li>{count(l.cards, "card")}</li>
                  <li>{count(l.contacts, "contact")}</li>
                  <li>
                    {Number(l.analyticsRetentionDays) < 0 ? "Unlimited" : `${l.analyticsRetentionDays} days of`} analytics
                  </li>
                </ul>
              )}
              {isCurrent ? (
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
      {target && (
        <ConfirmDialog
          title={`${rank(target.tier) > rank(current) ? "Upgrade" : "Downgrade"} to ${tierName(target.tier)}?`}
          message={<ChangeMessage plan={target} paid={paid} />}
          confirmLabel={!paid && target.tier !== Tier.FREE ? "Go to checkout" : `Switch to ${tierName(target.tier)}`}
          busy={busy}
          onConfirm={() => change(target)}
          onClose={() => setTarget(null)}
        />
      )}
    </section>
  );
}

function ChangeMessage({ plan, paid }: { plan: Plan; paid: boolean }) {
  if (plan.tier === Tier.FREE) {
    return <p>Your subscription is canceled at the end of this period; you keep your plan until then.</p>;
  }
  if (!paid) {
    return (
      <p>
        You will pay {money(plan.price)} per {plan.interval || "month"} on a secure checkout page, then come back
        here.
      </p>
    );
  }
  return (
    <p>
      Your subscription moves to {tierName(plan.tier)} ({money(plan.price)} per {plan.interval || "month"}) now; the
      difference is prorated on your next invoice.
    </p>
  );
}

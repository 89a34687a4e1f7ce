// Usage against the plan's limits; "Unlimited" where the plan has none. On PRO, extra cards
// beyond the limit (overage): the switch, how many there are and what they cost this month.
import { useState } from "react";
import type { GetUsageResponse, Overage } from "../gen/nexus/billing/v1/billing_pb";
import { ProgressBar } from "../components/ProgressBar";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { limit, money } from "../format";

export function UsagePanel({ usage, onChanged }: { usage?: GetUsageResponse; onChanged: () => void }) {
  const u = usage?.usage;
  if (!u) return null;
  const retention = Number(u.analyticsRetentionDays);
  return (
    <section className="card" aria-labelledby="usage-title">
      <h2 id="usage-title">Usage</h2>
      <ProgressBar
        label="Cards"
        value={Number(u.cardsUsed)}
        max={Number(u.cardsLimit)}
        unlimited={Number(u.cardsLimit) < 0}
        detail={`${Number(u.cardsUsed).toLocaleString()} of ${limit(u.cardsLimit)}`}
      />
      <ProgressBar
        label="Contacts"
        value={Number(u.contactsUsed)}
        max={Number(u.contactsLimit)}
        unlimited={Number(u.contactsLimit) < 0}
        detail={`${Number(u.contactsUsed).toLocaleString()} of ${limit(u.contactsLimit)}`}
      />
      <p className="usage-line">
        <span>Analytics retention</span>
        <strong data-testid="retention">{retention < 0 ? "Unlimited" : `${retention} days`}</strong>
      </p>
      {usage?.overage?.available && <ExtraCards overage={usage.overage} onChanged={onChanged} />}
    </section>
  );
}

function ExtraCards({ overage, onChanged }: { overage: Overage; onChanged: () => void }) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [busy, setBusy] = useState(false);
  const toggle = async () => {
    setBusy(true);
    try {
      await api.billing.setOverage({ enabled: !overage.enabled });
      toast(
        "success",
        overage.enabled ? "Extra cards are off." : "Extra cards are on: each card beyond your plan is billed per month.",
      );
      onChanged();
    } catch (e) {
      toast("error", explain(e));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="extra-cards" data-testid="extra-cards">
      <p className="usage-line">
        <span>Extra cards beyond your plan</span>
        <strong>
          {overage.enabled
            ? `${Number(overage.extraCards)} (${money(overage.monthlyCost)} this month, ${money(overage.unitPrice)} each)`
            : "Off"}
        </strong>
      </p>
      <button type="button" onClick={toggle} disabled={busy}>
        {overage.enabled ? "Turn extra cards off" : "Allow extra cards"}
      </button>
    </div>
  );
}

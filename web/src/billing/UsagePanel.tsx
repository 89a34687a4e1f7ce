// Usage against the plan's limits; "Unlimited" where the plan has none.
import type { GetUsageResponse } from "../gen/nexus/billing/v1/billing_pb";
import { ProgressBar } from "../components/ProgressBar";
import { limit } from "../format";

export function UsagePanel({ usage }: { usage?: GetUsageResponse }) {
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
    </section>
  );
}

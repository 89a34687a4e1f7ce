// The current plan: its status, when it renews or ends, a past-due warning, cancel and resume.
import { useEffect, useState } from "react";
import {
  InvoiceStatus,
  PaymentProvider,
  SubscriptionStatus,
  Tier,
  type Subscription,
} from "../gen/nexus/billing/v1/billing_pb";
import { Badge } from "../components/Badge";
import { ConfirmDialog } from "../components/Modal";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { date } from "../format";
import { hasPaidSubscription } from "./checkoutReturn";
import { statusLabel, tierName } from "./labels";

interface Props {
  subscription?: Subscription;
  confirming: boolean;
  onChanged: () => void;
}

export function PlanSummary({ subscription: sub, confirming, onChanged }: Props) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [asking, setAsking] = useState<"cancel" | "resume" | null>(null);
  const [busy, setBusy] = useState(false);
  const paid = hasPaidSubscription(sub);
  const pastDue = sub?.status === SubscriptionStatus.PAST_DUE || sub?.status === SubscriptionStatus.UNPAID;
  const [label, tone] = statusLabel(sub?.status ?? SubscriptionStatus.ACTIVE);
  const ends = date(sub?.accessEndsAt ?? sub?.currentPeriodEnd);

  const act = async (what: "cancel" | "resume") => {
    setBusy(true);
    try {
      const answer =
        what === "cancel" ? await api.billing.cancelSubscription({}) : await api.billing.resumeSubscription({});
      const end = date(answer.subscription?.currentPeriodEnd);
      toast(
        "success",
        what === "cancel"
          ? `Your subscription is canceled. You keep your plan until ${end}.`
          : `Your subscription is back on. It renews on ${end}.`,
      );
      onChanged();
    } catch (e) {
      toast("error", explain(e));
    } finally {
      setBusy(false);
      setAsking(null);
    }
  };

  return (
    <section className="card plan-summary" aria-labelledby="plan-title">
      <div className="plan-head">
        <div>
          <h2 id="plan-title">
            Current plan: <span data-testid="current-plan">{confirming ? "Activating…" : tierName(sub?.tier ?? Tier.FREE)}</span>
          </h2>
          {paid && !confirming && (
            <p data-testid="renewal">
              {sub?.cancelAtPeriodEnd
                ? `Cancels on ${ends}`
                : sub?.status === SubscriptionStatus.TRIALING && sub.trialEnd
                  ? `Trial ends on ${date(sub.trialEnd)}`
                  : `Renews on ${date(sub?.currentPeriodEnd)}`}
            </p>
          )}
          {!paid && !confirming && <p>The free plan: no card needed.</p>}
        </div>
        {paid && (
          <span data-testid="status-badge">
            <Badge tone={tone}>{label}</Badge>
          </span>
        )}
      </div>
      {pastDue && <PastDueWarning graceEnds={date(sub?.graceEndsAt)} tier={tierName(sub?.tier ?? Tier.FREE)} />}
      {paid && !confirming && (
        <div className="actions">
          {sub?.provider === PaymentProvider.STRIPE && !pastDue && <PortalButton label="Manage billing" />}
          {sub?.cancelAtPeriodEnd ? (
            <button type="button" className="primary" onClick={() => setAsking("resume")}>
              Resume subscription
            </button>
          ) : (
            <button type="button" className="danger-outline" onClick={() => setAsking("cancel")}>
              Cancel subscription
            </button>
          )}
        </div>
      )}
      {asking === "cancel" && (
        <ConfirmDialog
          title="Cancel your subscription?"
          message={<p>You keep {tierName(sub?.tier ?? Tier.FREE)} until {ends}, then move to the free plan. You can resume before then.</p>}
          confirmLabel="Cancel subscription"
          danger
          busy={busy}
          onConfirm={() => act("cancel")}
          onClose={() => setAsking(null)}
        />
      )}
      {asking === "resume" && (
        <ConfirmDialog
          title="Resume your subscription?"
          message={<p>Your {tierName(sub?.tier ?? Tier.FREE)} plan will renew on {ends} as before.</p>}
          confirmLabel="Resume subscription"
          busy={busy}
          onConfirm={() => act("resume")}
          onClose={() => setAsking(null)}
        />
      )}
    </section>
  );
}

/** Opens the payment provider's billing portal (cards, invoices, cancellation). */
function PortalButton({ label }: { label: string }) {
  const { api, explain } = useSession();
  const toast = useToast();
  const portal = async () => {
    try {
      const answer = await api.billing.createPortalSession({ returnUrl: window.location.href });
      window.location.assign(answer.url);
    } catch (e) {
      toast("error", explain(e));
    }
  };
  return (
    <button type="button" onClick={portal}>
      {label}
    </button>
  );
}

/** The last payment failed: until when the plan stays, a link to the open invoice, and the
 * billing portal. */
function PastDueWarning({ graceEnds, tier }: { graceEnds: string; tier: string }) {
  const { api } = useSession();
  const [invoiceUrl, setInvoiceUrl] = useState<string | null>(null);
  useEffect(() => {
    api.billing
      .listInvoices({ pageSize: 10 })
      .then((page) => {
        const open = page.invoices.find((i) => i.hostedInvoiceUrl && i.status === InvoiceStatus.OPEN);
        setInvoiceUrl(open?.hostedInvoiceUrl ?? null);
      })
      .catch(() => setInvoiceUrl(null));
  }, [api]);
  return (
    <div className="notice notice-warning" role="alert" data-testid="past-due">
      <p>
        <strong>Your last payment failed.</strong>{" "}
        {graceEnds ? (
          <span data-testid="grace-ends">
            Your {tier} plan stays on until {graceEnds}; pay the open invoice or update your payment method before then
            to keep it.
          </span>
        ) : (
          "Pay the open invoice or update your payment method to keep your plan."
        )}
      </p>
      <p className="actions">
        {invoiceUrl && (
          <a href={invoiceUrl} target="_blank" rel="noopener noreferrer">
            Pay the open invoice
          </a>
        )}
        <PortalButton label="Open the billing portal" />
      </p>
    </div>
  );
}

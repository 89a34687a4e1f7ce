// Starting a first subscription: the tier's price at the chosen interval and currency, the ways
// to pay it (card through Stripe, PayPal, M-Pesa in KES) and, for M-Pesa, the phone number, then
// a "check your phone" state that follows the request live (GetCheckoutStatus) until it is
// paid, cancelled, timed out or refused, with the reason.
import { useEffect, useId, useState } from "react";
import {
  BillingInterval,
  CheckoutState,
  PaymentProvider,
  type Plan,
} from "../gen/nexus/billing/v1/billing_pb";
import { Modal } from "../components/Modal";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { money } from "../format";
import { BILLING_PATH } from "../paths";
import { rememberCheckout } from "./checkoutReturn";
import { tierName } from "./labels";
import { kenyanMsisdn } from "./phone";

interface Props {
  plan: Plan;
  interval: BillingInterval;
  /** The currency the prices are shown in ("" = the provider's default). */
  currency: string;
  onClose: () => void;
  onPaid: () => void;
}

/** How often the page asks where an M-Pesa request stands. */
const POLL_MS = 1_500;

const PROVIDER_LABELS: Record<number, string> = {
  [PaymentProvider.STRIPE]: "Card",
  [PaymentProvider.PAYPAL]: "PayPal",
  [PaymentProvider.MPESA]: "M-Pesa",
};

export function CheckoutDialog({ plan, interval, currency, onClose, onPaid }: Props) {
  const { api, explain } = useSession();
  const toast = useToast();
  const phoneId = useId();
  const offers = plan.offers.filter(
    // M-Pesa buys 30-day periods: not offered for a yearly price.
    (o) => !(o.provider === PaymentProvider.MPESA && interval === BillingInterval.YEAR),
  );
  const [provider, setProvider] = useState<PaymentProvider>(offers[0]?.provider ?? PaymentProvider.STRIPE);
  const [phone, setPhone] = useState("");
  const [phoneError, setPhoneError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const [waiting, setWaiting] = useState<string | null>(null);
  const price = plan.prices.find((p) => p.interval === interval)?.amount ?? plan.price;
  const per = interval === BillingInterval.YEAR ? "year" : "month";

  const start = async () => {
    if (provider === PaymentProvider.MPESA) {
      const checked = kenyanMsisdn(phone);
      if (!checked.ok) {
        setPhoneError(checked.reason);
        return;
      }
      setPhoneError(null);
    }
    setBusy(true);
    try {
      const back = `${window.location.origin}${BILLING_PATH}`;
      const session = await api.billing.createCheckoutSession({
        tier: plan.tier,
        provider,
        interval,
        currency: provider === PaymentProvider.STRIPE ? currency : "",
        phoneNumber: provider === PaymentProvider.MPESA ? phone : "",
        successUrl: provider === PaymentProvider.MPESA ? "" : `${back}?success=true`,
        cancelUrl: provider === PaymentProvider.MPESA ? "" : `${back}?canceled=true`,
      });
      if (provider === PaymentProvider.MPESA) {
        setWaiting(session.sessionId);
        setBusy(false);
        return;
      }
      rememberCheckout(plan.tier);
      window.location.assign(session.url);
    } catch (e) {
      toast("error", explain(e));
      setBusy(false);
    }
  };

  if (waiting) {
    return <MpesaWaiting requestId={waiting} plan={plan} onClose={onClose} onPaid={onPaid} />;
  }
  return (
    <Modal title={`Upgrade to ${tierName(plan.tier)}`} onClose={onClose}>
      <div className="modal-body">
        <p data-testid="checkout-price">
          {money(price)} per {per}
        </p>
        {offers.length > 1 && (
          <fieldset className="choice">
            <legend>Pay with</legend>
            {offers.map((offer) => (
              <label key={offer.provider}>
                <input
                  type="radio"
                  name="provider"
                  checked={provider === offer.provider}
                  onChange={() => setProvider(offer.provider)}
                />
                {PROVIDER_LABELS[offer.provider] ?? "Other"}
                {offer.localPrice && ` (${money(offer.localPrice)} per 30 days)`}
              </label>
            ))}
          </fieldset>
        )}
        {provider === PaymentProvider.MPESA ? (
          <div className="field">
            <label htmlFor={phoneId}>M-Pesa phone number</label>
            <input
              id={phoneId}
              type="tel"
              inputMode="tel"
              autoComplete="tel"
              placeholder="0712 345 678"
              value={phone}
              aria-invalid={phoneError ? "true" : undefined}
              aria-describedby={phoneError ? `${phoneId}-error` : undefined}
              onChange={(e) => setPhone(e.target.value)}
            />
            {phoneError && (
              <p id={`${phoneId}-error`} className="field-error" role="alert">
                {phoneError}
              </p>
            )}
            <p className="hint">You confirm the payment on your phone with your M-Pesa PIN. Each payment buys 30 days.</p>
          </div>
        ) : (
          <p>You pay on a secure checkout page, then come back here.</p>
        )}
      </div>
      <div className="modal-actions">
        <button type="button" autoFocus onClick={onClose} disabled={busy}>
          Keep things as they are
        </button>
        <button type="button" className="primary" onClick={start} disabled={busy}>
          {provider === PaymentProvider.MPESA ? "Send the payment request" : "Go to checkout"}
        </button>
      </div>
    </Modal>
  );
}

/** "Check your phone", following the request until it ends. */
function MpesaWaiting({
  requestId,
  plan,
  onClose,
  onPaid,
}: {
  requestId: string;
  plan: Plan;
  onClose: () => void;
  onPaid: () => void;
}) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [state, setState] = useState<CheckoutState>(CheckoutState.PENDING);
  const [reason, setReason] = useState("");
  useEffect(() => {
    let stopped = false;
    (async () => {
      while (!stopped) {
        try {
          const answer = await api.billing.getCheckoutStatus({ sessionId: requestId });
          if (stopped) return;
          setState(answer.state);
          setReason(answer.reason);
          if (answer.state === CheckoutState.PAID) {
            toast("success", `Payment received: you are on ${tierName(plan.tier)} now.`);
            onPaid();
            return;
          }
          if (answer.state !== CheckoutState.PENDING) return;
        } catch (e) {
          if (!stopped) toast("error", explain(e));
          return;
        }
        await new Promise((r) => setTimeout(r, POLL_MS));
      }
    })();
    return () => {
      stopped = true;
    };
  }, [api, requestId]);
  const ended: Record<number, string> = {
    [CheckoutState.CANCELLED]: "The payment was cancelled on your phone.",
    [CheckoutState.TIMED_OUT]: "Your phone did not answer in time.",
    [CheckoutState.FAILED]: "The payment did not go through.",
  };
  return (
    <Modal title="M-Pesa payment" onClose={onClose}>
      <div className="modal-body" role="status" aria-live="polite" data-testid="mpesa-status">
        {state === CheckoutState.PENDING && (
          <p>
            <strong>Check your phone.</strong> Enter your M-Pesa PIN to pay for {tierName(plan.tier)}. This page updates
            by itself.
          </p>
        )}
        {state in ended && (
          <>
            <p>
              <strong>{ended[state]}</strong> You were not charged.
            </p>
            {reason && <p>Reason: {reason}</p>}
          </>
        )}
        {state === CheckoutState.PAID && <p>Paid. Your plan is on.</p>}
      </div>
      <div className="modal-actions">
        <button type="button" autoFocus onClick={onClose}>
          {state === CheckoutState.PENDING ? "Close (the request stays open on your phone)" : "Close"}
        </button>
      </div>
    </Modal>
  );
}

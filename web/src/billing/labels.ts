// Names and colours of tiers, subscription states and invoice states.
import { InvoiceStatus, SubscriptionStatus, Tier } from "../gen/nexus/billing/v1/billing_pb";
import type { Tone } from "../components/Badge";

export const TIER_ORDER = [Tier.FREE, Tier.PRO, Tier.PREMIUM];

export function tierName(tier: Tier): string {
  switch (tier) {
    case Tier.PRO:
      return "Pro";
    case Tier.PREMIUM:
      return "Premium";
    default:
      return "Free";
  }
}

export function statusLabel(status: SubscriptionStatus): [string, Tone] {
  switch (status) {
    case SubscriptionStatus.ACTIVE:
      return ["Active", "green"];
    case SubscriptionStatus.TRIALING:
      return ["Trial", "blue"];
    case SubscriptionStatus.PAST_DUE:
      return ["Past due", "amber"];
    case SubscriptionStatus.UNPAID:
      return ["Unpaid", "red"];
    case SubscriptionStatus.INCOMPLETE:
      return ["Incomplete", "amber"];
    case SubscriptionStatus.INCOMPLETE_EXPIRED:
      return ["Expired", "grey"];
    case SubscriptionStatus.CANCELED:
      return ["Canceled", "grey"];
    case SubscriptionStatus.PAUSED:
      return ["Paused", "grey"];
    default:
      return ["Unknown", "grey"];
  }
}

export function invoiceLabel(status: InvoiceStatus): [string, Tone] {
  switch (status) {
    case InvoiceStatus.PAID:
      return ["Paid", "green"];
    case InvoiceStatus.OPEN:
      return ["Open", "amber"];
    case InvoiceStatus.DRAFT:
      return ["Draft", "grey"];
    case InvoiceStatus.UNCOLLECTIBLE:
      return ["Uncollectible", "red"];
    case InvoiceStatus.VOID:
      return ["Void", "grey"];
    default:
      return ["Unknown", "grey"];
  }
}

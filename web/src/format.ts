// Formatting shared by both pages.
import { timestampDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { Money } from "./gen/nexus/billing/v1/billing_pb";

export function date(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toLocaleDateString(undefined, { year: "numeric", month: "long", day: "numeric" });
}

export function shortDate(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toLocaleDateString(undefined, { year: "numeric", month: "short", day: "numeric" });
}

export function dateTime(ts: Timestamp | undefined): string {
  if (!ts) return "";
  return timestampDate(ts).toLocaleString(undefined, {
    year: "numeric",
    month: "short",
    day: "numeric",
    hour: "2-digit",
    minute: "2-digit",
  });
}

export function money(amount: Money | undefined): string {
  if (!amount) return "";
  const currency = (amount.currency || "usd").toUpperCase();
  const format = new Intl.NumberFormat(undefined, { style: "currency", currency });
  const digits = format.resolvedOptions().maximumFractionDigits ?? 2;
  return format.format(Number(amount.amountMinor) / 10 ** digits);
}

/** "1 card", "5 cards", "Unlimited cards" (-1 means unlimited on the wire). */
export function count(value: bigint | number, noun: string): string {
  const n = Number(value);
  return `${limit(n)} ${n === 1 ? noun : `${noun}s`}`;
}

/** -1 means unlimited on the wire. */
export function limit(value: bigint | number): string {
  return Number(value) < 0 ? "Unlimited" : Number(value).toLocaleString();
}

// Kenyan mobile numbers as the service takes them for M-Pesa (src/domain/phone.rs): 07XX, 01XX,
// +2547XX, 2547XX or 7XX, spaces and dashes allowed. The service checks again; this only saves a
// round trip and says what is wrong before anything is sent.

/** The number as 2547XXXXXXXX / 2541XXXXXXXX, or why it is refused. */
export function kenyanMsisdn(raw: string): { ok: true; msisdn: string } | { ok: false; reason: string } {
  const cleaned = raw.trim().replace(/[\s\-().]/g, "");
  const digits = cleaned.startsWith("+") ? cleaned.slice(1) : cleaned;
  if (!digits || !/^\d+$/.test(digits)) {
    return { ok: false, reason: "Enter a Kenyan mobile number such as 0712 345 678." };
  }
  let national: string;
  if (digits.startsWith("254")) national = digits.slice(3);
  else if (digits.startsWith("0")) national = digits.slice(1);
  else if (cleaned.startsWith("+")) return { ok: false, reason: "Only Kenyan (+254) numbers can pay with M-Pesa." };
  else national = digits;
  if (national.length !== 9 || !(national.startsWith("7") || national.startsWith("1"))) {
    return { ok: false, reason: "Enter a Kenyan mobile number: 07XX XXX XXX, 01XX XXX XXX or +254 7XX XXX XXX." };
  }
  return { ok: true, msisdn: `254${national}` };
}

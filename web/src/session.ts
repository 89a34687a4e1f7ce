// The development sign-in: a token pasted by the user, kept for this tab only (sessionStorage).
const KEY = "nexus.token";

export function savedToken(): string | null {
  return sessionStorage.getItem(KEY);
}

export function saveToken(token: string): void {
  sessionStorage.setItem(KEY, token);
}

export function forgetToken(): void {
  sessionStorage.removeItem(KEY);
}

/** The token's `sub` and expiry, read without verifying (the service verifies). */
export function tokenSummary(token: string): { user?: string; expires?: Date } {
  try {
    const payload = token.split(".")[1] ?? "";
    const json = atob(payload.replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as { sub?: string; exp?: number };
    return {
      user: claims.sub,
      expires: typeof claims.exp === "number" ? new Date(claims.exp * 1000) : undefined,
    };
  } catch {
    return {};
  }
}

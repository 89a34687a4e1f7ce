// The typed grpc-web clients (Connect-Web over code generated from ../proto) and what the pages
// need to turn their errors into words. No wire code is written by hand.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AccountService } from "./gen/nexus/account/v1/account_pb";
import { BillingService } from "./gen/nexus/billing/v1/billing_pb";
import { IntegrationsService } from "./gen/nexus/integrations/v1/integrations_pb";

/** What the sidecar tells the page at /dashboard/config.json. */
export interface DashboardConfig {
  /** The grpc-web endpoint; when absent, this page's host on `grpcPort`. */
  grpcWebUrl?: string;
  grpcPort: number;
  /** Development: the service prints a token at start-up. */
  development: boolean;
  /** Payments go to the service's own test-mode sandbox (no money moves). */
  sandbox?: boolean;
}

export async function loadConfig(): Promise<DashboardConfig> {
  const response = await fetch(`${import.meta.env.BASE_URL}config.json`, { cache: "no-store" });
  if (!response.ok) throw new Error(`config.json: HTTP ${response.status}`);
  return (await response.json()) as DashboardConfig;
}

export function grpcWebUrl(config: DashboardConfig): string {
  return config.grpcWebUrl ?? `${window.location.protocol}//${window.location.hostname}:${config.grpcPort}`;
}

export interface Api {
  account: Client<typeof AccountService>;
  billing: Client<typeof BillingService>;
  integrations: Client<typeof IntegrationsService>;
  /**
   * Starts the OAuth flow StartOAuth gave (`startUrl`, on this service's sidecar): a POST with the
   * signed-in user's token binds the flow to this browser (a cookie) and answers where to send
   * it. Opening the start URL as a page binds nothing.
   */
  beginOAuth: (startUrl: string) => Promise<string>;
}

/** A start the sidecar refused, with its words for people. */
export class StartRefused extends Error {}

/** Clients that send `token` as a Bearer token on every call. */
export function createApi(baseUrl: string, token: string): Api {
  const bearer: Interceptor = (next) => async (request) => {
    request.header.set("authorization", `Bearer ${token}`);
    return next(request);
  };
  const transport = createGrpcWebTransport({ baseUrl, interceptors: [bearer] });
  return {
    account: createClient(AccountService, transport),
    billing: createClient(BillingService, transport),
    integrations: createClient(IntegrationsService, transport),
    beginOAuth: async (startUrl: string) => {
      const response = await fetch(startUrl, {
        method: "POST",
        headers: { authorization: `Bearer ${token}` },
        credentials: "same-origin",
        cache: "no-store",
      });
      if (!response.ok) throw new StartRefused(await response.text());
      const body = (await response.json()) as { authorizationUrl?: string };
      if (!body.authorizationUrl) throw new StartRefused("The sign-in could not be started.");
      return body.authorizationUrl;
    },
  };
}

/** The token was refused (expired, or signed for another service). */
export function isUnauthenticated(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unauthenticated;
}

/** The service could not be reached at all. */
export function isUnreachable(error: unknown): boolean {
  if (!(error instanceof ConnectError)) return error instanceof TypeError;
  if (error.code === Code.Unavailable) return true;
  // fetch() failing (connection refused, CORS) surfaces as an unknown error from a TypeError.
  return error.code === Code.Unknown && error.cause instanceof TypeError;
}

/** A sentence for the user: the service's own message where it wrote one for people. */
export function describe(error: unknown): string {
  if (isUnreachable(error)) {
    return "The billing service cannot be reached. Check your connection and try again.";
  }
  if (error instanceof StartRefused) return error.message;
  if (error instanceof ConnectError) {
    if (error.code === Code.Unauthenticated) return "Your session has expired. Sign in again.";
    if (error.code === Code.PermissionDenied) return "You are not allowed to do that.";
    if (error.code === Code.Internal || error.code === Code.Unknown) {
      return "Something went wrong on our side. Try again in a moment.";
    }
    return error.rawMessage || "The request failed.";
  }
  return error instanceof Error ? error.message : String(error);
}

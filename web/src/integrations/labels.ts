// Words for integration and sync job states.
import { HealthState, IntegrationStatus, SyncJobState } from "../gen/nexus/integrations/v1/integrations_pb";
import type { Tone } from "../components/Badge";

export function integrationLabel(status: IntegrationStatus): [string, Tone] {
  switch (status) {
    case IntegrationStatus.ACTIVE:
      return ["Active", "green"];
    case IntegrationStatus.ERROR:
      return ["Error", "red"];
    case IntegrationStatus.NEEDS_REAUTH:
      return ["Needs re-authorisation", "amber"];
    default:
      return ["Unknown", "grey"];
  }
}

export function healthLabel(state: HealthState): [string, Tone] {
  switch (state) {
    case HealthState.HEALTHY:
      return ["Healthy", "green"];
    case HealthState.DEGRADED:
      return ["Retrying", "amber"];
    case HealthState.FAILING:
      return ["Failing", "red"];
    case HealthState.NEEDS_ATTENTION:
      return ["Needs attention", "red"];
    default:
      return ["Unknown", "grey"];
  }
}

/** What the user can do about a connection's health (nothing when it is healthy). */
export function healthAdvice(state: HealthState): string | null {
  switch (state) {
    case HealthState.DEGRADED:
      return "A sync failed and is retried by itself; nothing to do unless it keeps failing.";
    case HealthState.FAILING:
      return "Several syncs in a row failed. Check the reason above and the provider's status, then choose Sync now to try again.";
    case HealthState.NEEDS_ATTENTION:
      return "The provider refused this connection: connect it again to fix it.";
    default:
      return null;
  }
}

export function jobFinished(state: SyncJobState): boolean {
  return (
    state === SyncJobState.SUCCEEDED ||
    state === SyncJobState.PARTIAL ||
    state === SyncJobState.FAILED ||
    state === SyncJobState.CANCELED
  );
}

export function jobLabel(state: SyncJobState): string {
  switch (state) {
    case SyncJobState.QUEUED:
      return "Waiting to start";
    case SyncJobState.RUNNING:
      return "Syncing";
    case SyncJobState.SUCCEEDED:
      return "Sync finished";
    case SyncJobState.PARTIAL:
      return "Sync finished with refused records";
    case SyncJobState.FAILED:
      return "Sync failed";
    case SyncJobState.CANCELED:
      return "Sync canceled";
    default:
      return "Sync";
  }
}

/** Query parameters the OAuth callback sends the browser back with. */
export function oauthOutcome(): { provider: string; ok: boolean; error?: string } | null {
  const query = new URLSearchParams(window.location.search);
  const status = query.get("status");
  const provider = query.get("integration");
  if (!status || !provider) return null;
  return { provider, ok: status === "connected", error: query.get("error") ?? undefined };
}

export function oauthErrorText(code: string | undefined): string {
  switch (code) {
    case "access_denied":
      return "you declined access at the provider";
    case "expired":
      return "the sign-in expired or was already used; start again";
    case "invalid_request":
    case "invalid_state":
      return "the sign-in could not be finished; start again";
    case "temporarily_unavailable":
      return "the provider or the service is busy; try again in a moment";
    default:
      return code ? `the provider answered "${code}"` : "the provider did not finish the sign-in";
  }
}

// One provider of the grid: what it is, whether it is connected, and what can be done with it.
import { useState } from "react";
import {
  IntegrationStatus,
  type Integration,
  type ProviderInfo,
} from "../gen/nexus/integrations/v1/integrations_pb";
import { Badge } from "../components/Badge";
import { ConfirmDialog } from "../components/Modal";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { dateTime } from "../format";
import { ConnectDialog } from "./ConnectDialog";
import { healthAdvice, healthLabel, integrationLabel } from "./labels";
import { SettingsDialog } from "./SettingsDialog";
import { SyncProgress } from "./SyncProgress";

interface Props {
  provider: ProviderInfo;
  integration?: Integration;
  onChanged: () => void;
}

type Open = "connect" | "settings" | "disconnect" | null;

export function ProviderCard({ provider, integration, onChanged }: Props) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [open, setOpen] = useState<Open>(null);
  const [busy, setBusy] = useState(false);
  const [syncing, setSyncing] = useState(0);
  const titleId = `provider-${provider.slug}`;
  const needsReauth = integration?.status === IntegrationStatus.NEEDS_REAUTH;

  const disconnect = async () => {
    setBusy(true);
    try {
      await api.integrations.disconnectIntegration({ provider: provider.provider });
      toast("success", `${provider.name} is disconnected.`);
      onChanged();
    } catch (e) {
      toast("error", explain(e));
    } finally {
      setBusy(false);
      setOpen(null);
    }
  };

  return (
    <li className="card provider" aria-labelledby={titleId} data-provider={provider.slug}>
      <div className="provider-head">
        <img src={provider.iconUrl} alt="" width={40} height={40} />
        <div>
          <h2 id={titleId}>{provider.name}</h2>
          {integration && <StatusLine integration={integration} />}
        </div>
      </div>
      <p className="description">{provider.description}</p>
      {!provider.available && (
        <p className="unavailable">Not available: {(provider.unavailableReason || "not configured on this service").replace(/\.$/, "")}.</p>
      )}
      {integration && (
        <p className="last-sync" data-testid="last-sync">
          {integration.lastSyncTime ? `Last synced ${dateTime(integration.lastSyncTime)}` : "Not synced yet"}
        </p>
      )}
      {syncing > 0 && integration && (
        <SyncProgress key={syncing} provider={provider} onFinished={onChanged} />
      )}
      <div className="actions">
        {(!integration || needsReauth) && (
          <button
            type="button"
            className="primary"
            disabled={!provider.available}
            onClick={() => setOpen("connect")}
            aria-label={`${needsReauth ? "Reconnect" : "Connect"} ${provider.name}`}
          >
            {needsReauth ? "Reconnect" : "Connect"}
          </button>
        )}
        {integration && !needsReauth && (
          <button type="button" className="primary" onClick={() => setSyncing((n) => n + 1)} aria-label={`Sync ${provider.name} now`}>
            Sync now
          </button>
        )}
        {integration && provider.settingFields.length > 0 && (
          <button type="button" onClick={() => setOpen("settings")} aria-label={`${provider.name} settings`}>
            Settings
          </button>
        )}
        {integration && (
          <button type="button" className="danger-outline" onClick={() => setOpen("disconnect")} aria-label={`Disconnect ${provider.name}`}>
            Disconnect
          </button>
        )}
      </div>
      {open === "connect" && (
        <ConnectDialog
          provider={provider}
          onClose={() => setOpen(null)}
          onConnected={() => {
            setOpen(null);
            toast("success", `${provider.name} is connected.`);
            onChanged();
          }}
        />
      )}
      {open === "settings" && integration && (
        <SettingsDialog
          provider={provider}
          integration={integration}
          onClose={() => setOpen(null)}
          onSaved={() => {
            setOpen(null);
            toast("success", `${provider.name} settings saved.`);
            onChanged();
          }}
        />
      )}
      {open === "disconnect" && (
        <ConfirmDialog
          title={`Disconnect ${provider.name}?`}
          message={<p>Syncing stops and the stored credentials are deleted. Contacts already at {provider.name} stay there.</p>}
          confirmLabel="Disconnect"
          danger
          busy={busy}
          onConfirm={disconnect}
          onClose={() => setOpen(null)}
        />
      )}
    </li>
  );
}

function StatusLine({ integration }: { integration: Integration }) {
  const [label, tone] = integrationLabel(integration.status);
  return (
    <>
      <p className="status-line" data-testid="integration-status">
        <Badge tone={tone}>{label}</Badge>
        {integration.status !== IntegrationStatus.ACTIVE && integration.lastError && (
          <span className="status-reason">{integration.lastError}</span>
        )}
      </p>
      <HealthLine integration={integration} />
    </>
  );
}

/** The connection's health and what the user can do about it. */
function HealthLine({ integration }: { integration: Integration }) {
  const health = integration.health;
  if (!health) return null;
  const [label, tone] = healthLabel(health.state);
  const advice = healthAdvice(health.state);
  const recent: string[] = [];
  if (health.failuresLastDay > 0) recent.push(`${health.failuresLastDay} failed in the last day`);
  if (health.rateLimitWaitsLastDay > 0) recent.push(`${health.rateLimitWaitsLastDay} waited for the provider's limit`);
  return (
    <div className="health" data-testid="integration-health">
      <p className="status-line">
        <Badge tone={tone}>{label}</Badge>
        {/* A connection in trouble shows its reason on the status line above. */}
        {integration.status === IntegrationStatus.ACTIVE && health.lastError && (
          <span className="status-reason">{health.lastError}</span>
        )}
      </p>
      {advice && <p className="hint">{advice}</p>}
      <p className="hint">
        {health.lastSuccessTime ? `Last good sync ${dateTime(health.lastSuccessTime)}` : "No sync has succeeded yet"}
        {recent.length > 0 && ` · ${recent.join(", ")}`}
        {health.tokenExpireTime && ` · access renews by itself (current token until ${dateTime(health.tokenExpireTime)})`}
      </p>
    </div>
  );
}

// /dashboard/integrations: the catalogue as a grid, with each provider's connection, and the
// connections' and syncs' activity.
import { useCallback, useEffect, useRef, useState } from "react";
import type { Integration, ProviderInfo } from "../gen/nexus/integrations/v1/integrations_pb";
import { ActivityList } from "../components/ActivityList";
import { ErrorPanel } from "../components/ErrorPanel";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { oauthErrorText, oauthOutcome } from "./labels";
import { ProviderCard } from "./ProviderCard";

interface Loaded {
  providers: ProviderInfo[];
  integrations: Integration[];
}

export function IntegrationsPage() {
  const { api, explain } = useSession();
  const toast = useToast();
  const [data, setData] = useState<Loaded | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [version, setVersion] = useState(0);
  const handled = useRef(false);

  const load = useCallback(async () => {
    try {
      const [providers, integrations] = await Promise.all([
        api.integrations.listProviders({}),
        api.integrations.listIntegrations({}),
      ]);
      setData({ providers: providers.providers, integrations: integrations.integrations });
      setError(null);
      setVersion((v) => v + 1);
    } catch (e) {
      setError(explain(e));
    }
  }, [api]);

  useEffect(() => {
    load();
    if (handled.current) return;
    handled.current = true;
    const outcome = oauthOutcome();
    if (!outcome) return;
    window.history.replaceState(null, "", window.location.pathname);
    if (outcome.ok) toast("success", `Connected to ${outcome.provider}.`);
    else toast("error", `Connecting ${outcome.provider} failed: ${oauthErrorText(outcome.error)}.`);
  }, [load, toast]);

  if (error && !data) return <ErrorPanel title="Integrations" message={error} onRetry={load} />;
  if (!data) {
    return (
      <section aria-busy="true">
        <h1>Integrations</h1>
        <p role="status">Loading integrations…</p>
      </section>
    );
  }
  return (
    <div className="page">
      <h1>Integrations</h1>
      <p className="lead">Send your contacts to the tools you use, and bring them back.</p>
      {error && <ErrorPanel message={error} onRetry={load} compact />}
      <ul className="provider-grid">
        {data.providers.map((provider) => (
          <ProviderCard
            key={provider.provider}
            provider={provider}
            integration={data.integrations.find((i) => i.provider === provider.provider)}
            onChanged={load}
          />
        ))}
      </ul>
      <ActivityList kinds={["integration.", "sync."]} version={version} />
    </div>
  );
}

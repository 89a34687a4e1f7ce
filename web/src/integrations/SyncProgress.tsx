// A sync started from the card: live progress from WatchSyncJob, then the counts and any
// refused records.
import { useEffect, useState } from "react";
import { SyncJobState, type ProviderInfo, type SyncJob } from "../gen/nexus/integrations/v1/integrations_pb";
import { useToast } from "../components/Toasts";
import { useSession } from "../context";
import { jobFinished, jobLabel } from "./labels";

interface Props {
  provider: ProviderInfo;
  onFinished: () => void;
}

export function SyncProgress({ provider, onFinished }: Props) {
  const { api, explain } = useSession();
  const toast = useToast();
  const [job, setJob] = useState<SyncJob | null>(null);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const abort = new AbortController();
    (async () => {
      try {
        const started = await api.integrations.syncIntegration({ provider: provider.provider }, { signal: abort.signal });
        let latest = started.job;
        if (!latest) return;
        setJob(latest);
        if (!jobFinished(latest.state)) {
          for await (const update of api.integrations.watchSyncJob({ id: latest.id }, { signal: abort.signal })) {
            if (!update.job) continue;
            latest = update.job;
            setJob(latest);
            if (jobFinished(latest.state)) break;
          }
        }
        if (latest.state === SyncJobState.FAILED) toast("error", `${provider.name} sync failed: ${latest.lastError}`);
        else if (jobFinished(latest.state)) toast("success", `${provider.name} sync finished.`);
        onFinished();
      } catch (e) {
        if (!abort.signal.aborted) setError(explain(e));
      }
    })();
    return () => abort.abort();
  }, [api, provider.provider]);

  if (error) {
    return (
      <p className="field-error" role="alert">
        {error}
      </p>
    );
  }
  if (!job) return <p role="status">Starting the sync…</p>;
  const total = Number(job.contactsTotal);
  const done = Number(job.contactsDone);
  const refused = Number(job.contactsFailed);
  const finished = jobFinished(job.state);
  const percent = total > 0 ? Math.round((Math.min(done, total) / total) * 100) : finished ? 100 : 0;
  return (
    <div className="sync-progress" data-testid="sync-progress">
      <div className="progress-label">
        <span id={`sync-${job.id}`}>{jobLabel(job.state)}</span>
        <span data-testid="sync-percent">{percent} %</span>
      </div>
      <progress aria-labelledby={`sync-${job.id}`} value={percent} max={100} />
      {finished && (
        <div role="status" data-testid="sync-result">
          <p>
            {/* contactsDone counts every contact handled, the refused ones too. */}
            {Math.max(0, done - refused).toLocaleString()} of {total.toLocaleString()} contacts synced
            {Number(job.contactsSkipped) > 0 && `, ${Number(job.contactsSkipped).toLocaleString()} skipped (${job.skippedReason})`}
            {refused > 0 && `, ${refused.toLocaleString()} refused by ${provider.name}`}.
          </p>
          {job.state === SyncJobState.FAILED && job.lastError && <p className="field-error">{job.lastError}</p>}
          {job.failures.length > 0 && (
            <details>
              <summary>Refused records ({job.failures.length})</summary>
              <ul className="failures">
                {job.failures.map((f) => (
                  <li key={f.email}>
                    <strong>{f.email}</strong>: {f.message}
                  </li>
                ))}
              </ul>
            </details>
          )}
        </div>
      )}
    </div>
  );
}

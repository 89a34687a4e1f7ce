// What happened to the user's billing or integrations (ListActivity), newest first. `kinds`
// keeps the entries whose kind starts with one of the prefixes (the billing page shows
// subscriptions and payments, the integrations page connections and syncs).
import type { ActivityEntry } from "../gen/nexus/account/v1/account_pb";
import { useSession } from "../context";
import { usePages } from "./usePages";
import { dateTime } from "../format";

/** Entries asked for per call; pages are filtered here, so a call may show fewer. */
const PAGE_SIZE = 50;

export function ActivityList({ kinds, version }: { kinds: string[]; version: number }) {
  const { api, explain } = useSession();
  const wanted = (e: ActivityEntry) => kinds.some((k) => e.kind.startsWith(k));
  const { items: entries, next, loading, error, more } = usePages(
    (pageToken) =>
      api.account
        .listActivity({ pageSize: PAGE_SIZE, pageToken })
        .then((page) => ({ items: page.entries.filter(wanted), next: page.nextPageToken })),
    explain,
    [api, version],
  );

  return (
    <section className="card" aria-labelledby="activity-title" aria-busy={loading}>
      <h2 id="activity-title">Activity</h2>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      {!loading && entries.length === 0 && !error && <p>Nothing has happened yet.</p>}
      {entries.length > 0 && (
        <ul className="activity" data-testid="activity">
          {entries.map((entry, i) => (
            <li key={`${entry.createdAt?.seconds ?? 0}-${i}`}>
              <time>{dateTime(entry.createdAt)}</time> <span>{entry.message}</span>
            </li>
          ))}
        </ul>
      )}
      {next && (
        <button type="button" onClick={more} disabled={loading}>
          {loading ? "Loading…" : "Show older activity"}
        </button>
      )}
    </section>
  );
}

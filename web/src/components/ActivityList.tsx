// What happened to the user's billing or integrations (ListActivity), newest first. `kinds`
// keeps the entries whose kind starts with one of the prefixes (the billing page shows
// subscriptions and payments, the integrations page connections and syncs).
import { useEffect, useState } from "react";
import type { ActivityEntry } from "../gen/nexus/account/v1/account_pb";
import { useSession } from "../context";
import { dateTime } from "../format";

/** Entries asked for per call; pages are filtered here, so a call may show fewer. */
const PAGE_SIZE = 50;

export function ActivityList({ kinds, version }: { kinds: string[]; version: number }) {
  const { api, explain } = useSession();
  const [entries, setEntries] = useState<ActivityEntry[]>([]);
  const [next, setNext] = useState("");
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);
  const wanted = (e: ActivityEntry) => kinds.some((k) => e.kind.startsWith(k));

  useEffect(() => {
    let stopped = false;
    setLoading(true);
    api.account
      .listActivity({ pageSize: PAGE_SIZE })
      .then((page) => {
        if (stopped) return;
        setEntries(page.entries.filter(wanted));
        setNext(page.nextPageToken);
        setError(null);
      })
      .catch((e: unknown) => !stopped && setError(explain(e)))
      .finally(() => !stopped && setLoading(false));
    return () => {
      stopped = true;
    };
  }, [api, version]);

  const more = async () => {
    setLoading(true);
    try {
      const page = await api.account.listActivity({ pageSize: PAGE_SIZE, pageToken: next });
      setEntries((all) => [...all, ...page.entries.filter(wanted)]);
      setNext(page.nextPageToken);
    } catch (e) {
      setError(explain(e));
    } finally {
      setLoading(false);
    }
  };

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

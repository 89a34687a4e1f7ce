// A list read a page at a time (ListInvoices, ListActivity): the first page whenever one of
// `deps` changes, then `more()` appends the next one. `explain` turns an error into a sentence.
import { useEffect, useState } from "react";

export interface Page<T> {
  items: T[];
  next: string;
}

export function usePages<T>(
  fetchPage: (pageToken: string) => Promise<Page<T>>,
  explain: (e: unknown) => string,
  deps: unknown[],
) {
  const [items, setItems] = useState<T[]>([]);
  const [next, setNext] = useState("");
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let stopped = false;
    setLoading(true);
    fetchPage("")
      .then((page) => {
        if (stopped) return;
        setItems(page.items);
        setNext(page.next);
        setError(null);
      })
      .catch((e: unknown) => !stopped && setError(explain(e)))
      .finally(() => !stopped && setLoading(false));
    return () => {
      stopped = true;
    };
    // The fetcher is rebuilt on every render: `deps` say when to read again.
  }, deps);

  const more = async () => {
    setLoading(true);
    try {
      const page = await fetchPage(next);
      setItems((all) => [...all, ...page.items]);
      setNext(page.next);
    } catch (e) {
      setError(explain(e));
    } finally {
      setLoading(false);
    }
  };

  return { items, next, loading, error, more };
}

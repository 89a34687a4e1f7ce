// Invoices, newest first, a page at a time, with links to the hosted invoice and its PDF.
import { useEffect, useState } from "react";
import type { Invoice } from "../gen/nexus/billing/v1/billing_pb";
import { Badge } from "../components/Badge";
import { useSession } from "../context";
import { money, shortDate } from "../format";
import { invoiceLabel } from "./labels";

const PAGE_SIZE = 10;

export function InvoiceList({ version }: { version: number }) {
  const { api, explain } = useSession();
  const [invoices, setInvoices] = useState<Invoice[]>([]);
  const [next, setNext] = useState("");
  const [loading, setLoading] = useState(true);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    let stopped = false;
    setLoading(true);
    api.billing
      .listInvoices({ pageSize: PAGE_SIZE })
      .then((page) => {
        if (stopped) return;
        setInvoices(page.invoices);
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
      const page = await api.billing.listInvoices({ pageSize: PAGE_SIZE, pageToken: next });
      setInvoices((all) => [...all, ...page.invoices]);
      setNext(page.nextPageToken);
    } catch (e) {
      setError(explain(e));
    } finally {
      setLoading(false);
    }
  };

  return (
    <section className="card" aria-labelledby="invoices-title" aria-busy={loading}>
      <h2 id="invoices-title">Invoices</h2>
      {error && (
        <p className="field-error" role="alert">
          {error}
        </p>
      )}
      {!loading && invoices.length === 0 && !error && <p>No invoices yet.</p>}
      {invoices.length > 0 && (
        <div className="table-scroll">
          <table className="invoices">
            <thead>
              <tr>
                <th scope="col">Date</th>
                <th scope="col">Amount</th>
                <th scope="col">Status</th>
                <th scope="col">
                  <span className="visually-hidden">Links</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {invoices.map((invoice) => {
                const [label, tone] = invoiceLabel(invoice.status);
                const when = shortDate(invoice.createTime ?? invoice.periodEnd);
                return (
                  <tr key={invoice.id}>
                    <td>{when}</td>
                    <td>{money(invoice.amountDue)}</td>
                    <td>
                      <Badge tone={tone}>{label}</Badge>
                    </td>
                    <td className="links">
                      {invoice.hostedInvoiceUrl && (
                        <a href={invoice.hostedInvoiceUrl} target="_blank" rel="noopener noreferrer" aria-label={`View the invoice of ${when}`}>
                          View
                        </a>
                      )}
                      {invoice.invoicePdfUrl && (
                        <a href={invoice.invoicePdfUrl} target="_blank" rel="noopener noreferrer" aria-label={`PDF of the invoice of ${when}`}>
                          PDF
                        </a>
                      )}
                    </td>
                  </tr>
                );
              })}
            </tbody>
          </table>
        </div>
      )}
      {next && (
        <button type="button" onClick={more} disabled={loading}>
          {loading ? "Loading…" : "Show older invoices"}
        </button>
      )}
    </section>
  );
}

// Invoices, newest first, a page at a time, with links to the hosted invoice and its PDF.
import { Badge } from "../components/Badge";
import { usePages } from "../components/usePages";
import { useSession } from "../context";
import { money, shortDate } from "../format";
import { invoiceLabel } from "./labels";

const PAGE_SIZE = 10;

export function InvoiceList({ version }: { version: number }) {
  const { api, explain } = useSession();
  const { items: invoices, next, loading, error, more } = usePages(
    (pageToken) =>
      api.billing
        .listInvoices({ pageSize: PAGE_SIZE, pageToken })
        .then((page) => ({ items: page.invoices, next: page.nextPageToken })),
    explain,
    [api, version],
  );

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

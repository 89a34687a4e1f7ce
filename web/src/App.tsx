// The shell: sign-in, navigation between the two pages, and the signed-in session.
import { useCallback, useEffect, useMemo, useState } from "react";
import { createApi, grpcWebUrl, type DashboardConfig } from "./api";
import { BillingPage } from "./billing/BillingPage";
import { ToastProvider } from "./components/Toasts";
import { SessionContext, navigate } from "./context";
import { IntegrationsPage } from "./integrations/IntegrationsPage";
import { forgetToken, saveToken, savedToken, tokenSummary } from "./session";
import { SignIn } from "./SignIn";
import { BILLING_PATH, INTEGRATIONS_PATH } from "./paths";




function usePath(): string {
  const [path, setPath] = useState(window.location.pathname);
  useEffect(() => {
    const update = () => setPath(window.location.pathname);
    window.addEventListener("popstate", update);
    return () => window.removeEventListener("popstate", update);
  }, []);
  return path;
}

export function App({ config }: { config: DashboardConfig }) {
  const [token, setToken] = useState<string | null>(savedToken);
  const [reason, setReason] = useState<string | undefined>();
  const path = usePath();
  const baseUrl = grpcWebUrl(config);

  const expired = useCallback(() => {
    forgetToken();
    setToken(null);
    setReason("Your session has expired or the token was refused. Paste a new token to go on.");
  }, []);
  const session = useMemo(() => (token ? { api: createApi(baseUrl, token), expired } : null), [baseUrl, token, expired]);

  useEffect(() => {
    if (path === "/dashboard" || path === "/dashboard/") navigate(BILLING_PATH);
  }, [path]);

  if (!token || !session) {
    return (
      <SignIn
        reason={reason}
        development={config.development}
        onToken={(t) => {
          saveToken(t);
          setReason(undefined);
          setToken(t);
        }}
      />
    );
  }
  const user = tokenSummary(token).user;
  const onIntegrations = path.startsWith(INTEGRATIONS_PATH);
  return (
    <SessionContext.Provider value={session}>
      <ToastProvider>
        <a className="skip-link" href="#main">
          Skip to content
        </a>
        <header className="topbar">
          <span className="brand">Nexus Cards</span>
          <nav aria-label="Dashboard">
            <a
              href={BILLING_PATH}
              aria-current={!onIntegrations ? "page" : undefined}
              onClick={(e) => {
                e.preventDefault();
                navigate(BILLING_PATH);
              }}
            >
              Billing
            </a>
            <a
              href={INTEGRATIONS_PATH}
              aria-current={onIntegrations ? "page" : undefined}
              onClick={(e) => {
                e.preventDefault();
                navigate(INTEGRATIONS_PATH);
              }}
            >
              Integrations
            </a>
          </nav>
          <span className="account">
            {user && <span className="user">{user}</span>}
            <button
              type="button"
              className="link"
              onClick={() => {
                forgetToken();
                setReason(undefined);
                setToken(null);
              }}
            >
              Sign out
            </button>
          </span>
        </header>
        {config.sandbox && (
          <p className="notice notice-info sandbox-banner" role="note" data-testid="sandbox-banner">
            <strong>Payments sandbox:</strong> test mode, no money moves. Checkout and the billing portal are this
            service's own pages.
          </p>
        )}
        <main id="main" tabIndex={-1}>
          {onIntegrations ? <IntegrationsPage /> : <BillingPage />}
        </main>
      </ToastProvider>
    </SessionContext.Provider>
  );
}

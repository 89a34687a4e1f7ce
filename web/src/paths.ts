// The dashboard's pages.
export const BILLING_PATH = "/dashboard/settings/billing";
export const INTEGRATIONS_PATH = "/dashboard/integrations";

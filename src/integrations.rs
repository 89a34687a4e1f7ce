//! Integrations use cases: the provider catalogue with availability, and a user's integrations.

use std::sync::Arc;

use crate::{
    domain::{
        UserId,
        catalogue::{AuthKind, CATALOGUE, ProviderSpec},
        integration::Integration,
    },
    store::{Store, StoreError},
};

pub struct Integrations {
    store: Arc<dyn Store>,
}

/// A catalogue entry and whether the service can offer it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogueEntry {
    pub spec: &'static ProviderSpec,
    /// `None` when available; otherwise why not.
    pub unavailable_reason: Option<&'static str>,
}

impl Integrations {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Every provider, in display order, with its availability.
    pub fn catalogue(&self) -> Vec<CatalogueEntry> {
        CATALOGUE
            .iter()
            .map(|spec| CatalogueEntry {
                spec,
                unavailable_reason: Some(match spec.auth {
                    // Connecting arrives with the integrations-core and OAuth issues.
                    AuthKind::ApiKey | AuthKind::WebhookUrl => {
                        "connecting this provider is not available in this version yet"
                    }
                    AuthKind::OAuth2 => "OAuth connections are not available in this version yet",
                }),
            })
            .collect()
    }

    /// The user's integrations, never with credentials.
    pub async fn list(&self, user: &UserId) -> Result<Vec<Integration>, StoreError> {
        self.store.integrations(user).await
    }
}

//! The provider catalogue: one table describing every integration (auth, fields, batch size,
//! rate limit). `ListProviders` serves it so a UI can build its connect dialog from data.

use std::{fmt, str::FromStr};

/// An outside service a user can connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderId {
    Salesforce,
    Hubspot,
    ZohoCrm,
    Mailchimp,
    Sendgrid,
    Zapier,
    GoogleDrive,
    Dropbox,
}

/// How a provider is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    ApiKey,
    OAuth2,
    WebhookUrl,
}

/// Which input a UI draws for a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputType {
    Text,
    Password,
    Url,
    Number,
}

/// Which way contacts flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncDirection {
    Push,
    Import,
}

/// A secret input of the connect dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CredentialField {
    pub key: &'static str,
    pub label: &'static str,
    pub input_type: InputType,
    pub secret: bool,
    pub required: bool,
    pub help: &'static str,
}

/// A non-secret setting of an integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettingField {
    pub key: &'static str,
    pub label: &'static str,
    pub input_type: InputType,
    pub required: bool,
    pub help: &'static str,
}

/// A provider's documented request budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub requests: u32,
    pub per_seconds: u32,
}

/// Everything the service knows about a provider, as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProviderSpec {
    pub id: ProviderId,
    pub slug: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub icon_url: &'static str,
    pub auth: AuthKind,
    pub credential_fields: &'static [CredentialField],
    pub setting_fields: &'static [SettingField],
    /// Contacts per request; 0 means the whole list goes in one file.
    pub batch_size: u32,
    pub rate_limit: RateLimit,
    pub directions: &'static [SyncDirection],
}

/// Every integration has this setting: seconds between automatic syncs (empty means manual only).
const SYNC_INTERVAL: SettingField = SettingField {
    key: "syncInterval",
    label: "Sync every (seconds)",
    input_type: InputType::Number,
    required: false,
    help: "Leave empty to sync only on demand.",
};

/// Providers that can be imported from have this setting: which way automatic syncs go.
const SYNC_DIRECTION: SettingField = SettingField {
    key: "syncDirection",
    label: "Automatic syncs",
    input_type: InputType::Text,
    required: false,
    help: "push (default), import or both: which way the automatic syncs move contacts.",
};

const PUSH_AND_IMPORT: &[SyncDirection] = &[SyncDirection::Push, SyncDirection::Import];
const PUSH_ONLY: &[SyncDirection] = &[SyncDirection::Push];

/// The catalogue, in display order.
pub const CATALOGUE: [ProviderSpec; 8] = [
    ProviderSpec {
        id: ProviderId::Salesforce,
        slug: "salesforce",
        name: "Salesforce",
        description: "Push your contacts to Salesforce CRM as Contacts, and import them back.",
        icon_url: "/icons/salesforce.svg",
        auth: AuthKind::OAuth2,
        credential_fields: &[],
        setting_fields: &[SYNC_INTERVAL, SYNC_DIRECTION],
        batch_size: 200,
        rate_limit: RateLimit {
            requests: 100,
            per_seconds: 10,
        },
        directions: PUSH_AND_IMPORT,
    },
    ProviderSpec {
        id: ProviderId::Hubspot,
        slug: "hubspot",
        name: "HubSpot",
        description: "Upsert your contacts into HubSpot CRM by email, and import them back.",
        icon_url: "/icons/hubspot.svg",
        auth: AuthKind::ApiKey,
        credential_fields: &[CredentialField {
            key: "accessToken",
            label: "Private app access token",
            input_type: InputType::Password,
            secret: true,
            required: true,
            help: "HubSpot > Settings > Integrations > Private apps, with the crm.objects.contacts scopes.",
        }],
        setting_fields: &[SYNC_INTERVAL, SYNC_DIRECTION],
        batch_size: 100,
        rate_limit: RateLimit {
            requests: 100,
            per_seconds: 10,
        },
        directions: PUSH_AND_IMPORT,
    },
    ProviderSpec {
        id: ProviderId::ZohoCrm,
        slug: "zoho_crm",
        name: "Zoho CRM",
        description: "Upsert your contacts into Zoho CRM by email, and import them back.",
        icon_url: "/icons/zoho-crm.svg",
        auth: AuthKind::OAuth2,
        credential_fields: &[],
        setting_fields: &[SYNC_INTERVAL, SYNC_DIRECTION],
        batch_size: 100,
        rate_limit: RateLimit {
            requests: 100,
            per_seconds: 60,
        },
        directions: PUSH_AND_IMPORT,
    },
    ProviderSpec {
        id: ProviderId::Mailchimp,
        slug: "mailchimp",
        name: "Mailchimp",
        description: "Subscribe your contacts to a Mailchimp audience, and import its members.",
        icon_url: "/icons/mailchimp.svg",
        auth: AuthKind::ApiKey,
        credential_fields: &[CredentialField {
            key: "apiKey",
            label: "API key",
            input_type: InputType::Password,
            secret: true,
            required: true,
            help: "Mailchimp > Account > Extras > API keys; it ends with your data centre, e.g. -us6.",
        }],
        setting_fields: &[
            SettingField {
                key: "listId",
                label: "Audience id",
                input_type: InputType::Text,
                required: true,
                help: "Audience > Settings > Audience name and defaults > Audience ID.",
            },
            SYNC_INTERVAL,
            SYNC_DIRECTION,
        ],
        batch_size: 500,
        rate_limit: RateLimit {
            requests: 10,
            per_seconds: 1,
        },
        directions: PUSH_AND_IMPORT,
    },
    ProviderSpec {
        id: ProviderId::Sendgrid,
        slug: "sendgrid",
        name: "SendGrid",
        description: "Add your contacts to SendGrid Marketing Campaigns.",
        icon_url: "/icons/sendgrid.svg",
        auth: AuthKind::ApiKey,
        credential_fields: &[CredentialField {
            key: "apiKey",
            label: "API key",
            input_type: InputType::Password,
            secret: true,
            required: true,
            help: "SendGrid > Settings > API Keys, with Marketing access.",
        }],
        setting_fields: &[
            SettingField {
                key: "listIds",
                label: "List ids (comma-separated)",
                input_type: InputType::Text,
                required: false,
                help: "Contacts are added to these lists; empty means All Contacts only.",
            },
            SYNC_INTERVAL,
        ],
        batch_size: 10_000,
        rate_limit: RateLimit {
            requests: 1,
            per_seconds: 1,
        },
        directions: PUSH_ONLY,
    },
    ProviderSpec {
        id: ProviderId::Zapier,
        slug: "zapier",
        name: "Zapier",
        description: "Send your contacts to a Zapier catch hook to start your Zaps.",
        icon_url: "/icons/zapier.svg",
        auth: AuthKind::WebhookUrl,
        credential_fields: &[CredentialField {
            key: "webhookUrl",
            label: "Catch hook URL",
            input_type: InputType::Url,
            secret: true,
            required: true,
            help: "From a Zap's 'Webhooks by Zapier > Catch Hook' trigger. Each batch comes with an \
                   Idempotency-Key header, the same when a batch is sent again after a lost answer: \
                   add a step that skips a key already seen to run your Zap once per batch.",
        }],
        setting_fields: &[SYNC_INTERVAL],
        batch_size: 100,
        rate_limit: RateLimit {
            requests: 20,
            per_seconds: 1,
        },
        directions: PUSH_ONLY,
    },
    ProviderSpec {
        id: ProviderId::GoogleDrive,
        slug: "google_drive",
        name: "Google Drive",
        description: "Keep a contacts.csv file of your contacts in your Google Drive.",
        icon_url: "/icons/google-drive.svg",
        auth: AuthKind::OAuth2,
        credential_fields: &[],
        setting_fields: &[SYNC_INTERVAL],
        batch_size: 0,
        rate_limit: RateLimit {
            requests: 10,
            per_seconds: 1,
        },
        directions: PUSH_ONLY,
    },
    ProviderSpec {
        id: ProviderId::Dropbox,
        slug: "dropbox",
        name: "Dropbox",
        description: "Keep a CSV file of your contacts in your Dropbox.",
        icon_url: "/icons/dropbox.svg",
        auth: AuthKind::OAuth2,
        credential_fields: &[],
        setting_fields: &[
            SettingField {
                key: "path",
                label: "File path",
                input_type: InputType::Text,
                required: false,
                help: "Where the file goes; defaults to /Nexus Cards/contacts.csv.",
            },
            SYNC_INTERVAL,
        ],
        batch_size: 0,
        rate_limit: RateLimit {
            requests: 10,
            per_seconds: 1,
        },
        directions: PUSH_ONLY,
    },
];

impl ProviderSpec {
    /// Whether contacts can be imported from the provider.
    pub fn can_import(&self) -> bool {
        self.directions.contains(&SyncDirection::Import)
    }
}

impl ProviderId {
    /// The catalogue entry of this provider.
    pub fn spec(self) -> &'static ProviderSpec {
        // Every id has exactly one entry; a unit test holds the table to that.
        let index = match self {
            ProviderId::Salesforce => 0,
            ProviderId::Hubspot => 1,
            ProviderId::ZohoCrm => 2,
            ProviderId::Mailchimp => 3,
            ProviderId::Sendgrid => 4,
            ProviderId::Zapier => 5,
            ProviderId::GoogleDrive => 6,
            ProviderId::Dropbox => 7,
        };
        &CATALOGUE[index]
    }

    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        self.spec().slug
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.spec().name)
    }
}

/// A stored provider name that this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown provider {0:?}")]
pub struct UnknownProvider(pub String);

impl FromStr for ProviderId {
    type Err = UnknownProvider;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        CATALOGUE
            .iter()
            .find(|spec| spec.slug == s)
            .map(|spec| spec.id)
            .ok_or_else(|| UnknownProvider(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_found_by_its_own_id_and_slug() {
        for spec in &CATALOGUE {
            assert_eq!(spec.id.spec(), spec);
            assert_eq!(spec.slug.parse::<ProviderId>().ok(), Some(spec.id));
        }
    }

    #[test]
    fn api_key_and_webhook_providers_ask_for_a_secret_and_oauth_ones_ask_for_nothing() {
        for spec in &CATALOGUE {
            match spec.auth {
                AuthKind::OAuth2 => assert!(spec.credential_fields.is_empty(), "{}", spec.slug),
                AuthKind::ApiKey | AuthKind::WebhookUrl => {
                    assert!(
                        spec.credential_fields
                            .iter()
                            .any(|f| f.secret && f.required)
                    )
                }
            }
        }
    }
}

//! `rotate-keys`: re-seals every stored credential under the current vault key, page by page,
//! while the service keeps running. Servers started with the new ENCRYPTION_KEY and the old one
//! in ENCRYPTION_KEY_PREVIOUS read both during the rotation; each envelope is replaced only if
//! it is unchanged since it was read, so a concurrent reconnect is never overwritten.

use crate::{
    store::{Store, StoreError},
    vault::Vault,
};

const PAGE: u32 = 200;

/// What a rotation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RotationReport {
    /// Re-sealed under the current key.
    pub rotated: u64,
    /// Already under the current key.
    pub already_current: u64,
    /// Changed by someone else while rotating (and so already re-sealed by them).
    pub changed_meanwhile: u64,
    /// Integration ids whose credentials no configured key opens.
    pub unreadable: Vec<String>,
}

pub async fn rotate_credentials(
    store: &dyn Store,
    vault: &Vault,
) -> Result<RotationReport, StoreError> {
    let mut report = RotationReport::default();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .sealed_credentials_page(after.as_deref(), PAGE)
            .await?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = Some(last.clone());
        for (id, sealed) in page {
            if !vault.needs_rotation(&sealed) {
                report.already_current += 1;
                continue;
            }
            match vault.open(&sealed) {
                Ok(credentials) => {
                    let resealed = vault.seal(&credentials);
                    if store
                        .replace_sealed_credentials(&id, &sealed, &resealed)
                        .await?
                    {
                        report.rotated += 1;
                    } else {
                        report.changed_meanwhile += 1;
                    }
                }
                Err(e) => {
                    tracing::error!(integration_id = %id, error = %e, "cannot re-seal credentials");
                    report.unreadable.push(id);
                }
            }
        }
    }
    Ok(report)
}

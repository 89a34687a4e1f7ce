//! Reading the values of settings that are more than a string: rate limits, keys, and the
//! development encryption key kept in DATA_DIR (origins are in origins.rs).

use std::{collections::BTreeMap, path::Path};

use rand::RngCore;
use secrecy::SecretBox;

use super::EncryptionKey;
use crate::domain::catalogue::{ProviderId, RateLimit};

pub(super) fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// `slug=N/Ds` pairs, comma-separated, e.g. `hubspot=190/10s,zapier=20/1s`.
pub fn parse_rate_limits(list: &str) -> Result<BTreeMap<ProviderId, RateLimit>, String> {
    let mut limits = BTreeMap::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("{item:?} is not like hubspot=190/10s");
        let (slug, budget) = item.split_once('=').ok_or_else(bad)?;
        let provider: ProviderId = slug.trim().parse().map_err(|e| format!("{e}"))?;
        let (requests, window) = budget.split_once('/').ok_or_else(bad)?;
        let requests: u32 = requests.trim().parse().map_err(|_| bad())?;
        let window = humantime::parse_duration(window.trim()).map_err(|_| bad())?;
        let per_seconds = u32::try_from(window.as_secs()).map_err(|_| bad())?;
        if requests == 0 || per_seconds == 0 || window.subsec_nanos() != 0 {
            return Err(format!(
                "{item:?}: needs at least 1 request per whole number of seconds"
            ));
        }
        limits.insert(
            provider,
            RateLimit {
                requests,
                per_seconds,
            },
        );
    }
    Ok(limits)
}

pub(super) fn parse_key(hex_key: &str) -> Result<EncryptionKey, String> {
    let trimmed = hex_key.trim();
    if trimmed.len() != 64 {
        return Err(format!(
            "must be 64 hex characters (32 bytes); got {} characters",
            trimmed.len()
        ));
    }
    let mut key = Box::new([0u8; 32]);
    hex::decode_to_slice(trimmed, key.as_mut_slice())
        .map_err(|_| "must be 64 hex characters (0-9, a-f)".to_string())?;
    Ok(EncryptionKey(SecretBox::new(key)))
}

pub(super) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

/// The development key: read from DATA_DIR/encryption.key, or generated there once (mode 0600).
pub(super) fn dev_encryption_key(data_dir: &Path) -> Result<EncryptionKey, String> {
    let path = data_dir.join("encryption.key");
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            parse_key(&existing).map_err(|e| format!("{} is invalid: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let hex_key = random_hex(32);
            write_private(&path, &hex_key)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            parse_key(&hex_key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(contents.as_bytes())
}

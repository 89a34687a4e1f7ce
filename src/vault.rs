//! The credential vault: AES-256-CBC with a fresh random IV, then HMAC-SHA256 over everything
//! before the tag (encrypt-then-MAC), checked in constant time before anything is decrypted.
//!
//! Envelope: `version (1) | key id (4) | IV (16) | ciphertext (16n) | tag (32)`.
//! The encryption and MAC keys are derived from the configured 32-byte key with HMAC-SHA256
//! under distinct labels, and the key id is derived the same way, so rotating keys needs no
//! bookkeeping: the current key seals, the previous keys still open, and `rotate-keys`
//! re-seals everything under the current key.

use std::{collections::BTreeMap, fmt};

use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit, block_padding::Pkcs7};
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::domain::credentials::Credentials;

type HmacSha256 = Hmac<Sha256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

const VERSION: u8 = 1;
const KEY_ID_LEN: usize = 4;
const IV_LEN: usize = 16;
const TAG_LEN: usize = 32;
const HEADER_LEN: usize = 1 + KEY_ID_LEN + IV_LEN;

/// Why an envelope cannot be opened. None of these carry any of the envelope's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VaultError {
    #[error("sealed credentials are truncated")]
    Truncated,
    #[error("sealed credentials have an unknown format version")]
    UnknownVersion,
    #[error("sealed credentials were sealed with a key this service does not have (key id {0})")]
    UnknownKey(String),
    #[error("sealed credentials failed the integrity check")]
    Tampered,
    #[error("sealed credentials do not hold valid credentials")]
    Malformed,
    #[error("the vault key cannot be used")]
    KeySetup,
}

/// One configured key, split into its derived parts.
struct VaultKey {
    id: [u8; KEY_ID_LEN],
    encryption: [u8; 32],
    /// HMAC keyed with the derived MAC key, cloned for each tag.
    mac: HmacSha256,
}

impl VaultKey {
    fn derive(master: &[u8; 32]) -> Result<Self, VaultError> {
        let id_bytes = prf(master, b"nexus-vault/v1/key-id")?;
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&id_bytes[..KEY_ID_LEN]);
        let mac_key = prf(master, b"nexus-vault/v1/mac")?;
        Ok(Self {
            id,
            encryption: prf(master, b"nexus-vault/v1/encryption")?,
            mac: <HmacSha256 as KeyInit>::new_from_slice(&mac_key)
                .map_err(|_| VaultError::KeySetup)?,
        })
    }

    fn tag(&self, data: &[u8]) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac
    }
}

fn prf(key: &[u8; 32], label: &[u8]) -> Result<[u8; 32], VaultError> {
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).map_err(|_| VaultError::KeySetup)?;
    mac.update(label);
    Ok(mac.finalize().into_bytes().into())
}

/// Seals and opens credentials. Holds the current key and any previous ones.
pub struct Vault {
    current: VaultKey,
    previous: Vec<VaultKey>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("current_key_id", &hex::encode(self.current.id))
            .field("previous_keys", &self.previous.len())
            .finish()
    }
}

impl Vault {
    pub fn new(current: &[u8; 32], previous: &[&[u8; 32]]) -> Result<Self, VaultError> {
        Ok(Self {
            current: VaultKey::derive(current)?,
            previous: previous
                .iter()
                .map(|k| VaultKey::derive(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The id of the key new envelopes are sealed with (safe to log).
    pub fn current_key_id(&self) -> String {
        hex::encode(self.current.id)
    }

    /// Encrypts `plaintext` under the current key with a fresh random IV.
    pub fn seal_bytes(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut iv = [0u8; IV_LEN];
        rand::rng().fill_bytes(&mut iv);
        let ciphertext = Aes256CbcEnc::new(&self.current.encryption.into(), &iv.into())
            .encrypt_padded_vec::<Pkcs7>(plaintext);
        let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len() + TAG_LEN);
        out.push(VERSION);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ciphertext);
        let tag = self.current.tag(&out).finalize().into_bytes();
        out.extend_from_slice(&tag);
        out
    }

    /// Checks the tag (constant time), then decrypts.
    pub fn open_bytes(&self, envelope: &[u8]) -> Result<Vec<u8>, VaultError> {
        if envelope.len() < HEADER_LEN + IV_LEN + TAG_LEN {
            return Err(VaultError::Truncated);
        }
        if envelope[0] != VERSION {
            return Err(VaultError::UnknownVersion);
        }
        let key = self.key_for(envelope)?;
        let (body, tag) = envelope.split_at(envelope.len() - TAG_LEN);
        key.tag(body)
            .verify_slice(tag)
            .map_err(|_| VaultError::Tampered)?;
        let ciphertext = &body[HEADER_LEN..];
        if ciphertext.len() % IV_LEN != 0 {
            return Err(VaultError::Truncated);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&body[1 + KEY_ID_LEN..HEADER_LEN]);
        Aes256CbcDec::new(&key.encryption.into(), &iv.into())
            .decrypt_padded_vec::<Pkcs7>(ciphertext)
            .map_err(|_| VaultError::Malformed)
    }

    /// Seals credentials (as JSON) under the current key.
    pub fn seal(&self, credentials: &Credentials) -> Vec<u8> {
        // Serialising a map of strings cannot fail.
        let json = serde_json::to_vec(&credentials.expose_all()).unwrap_or_default();
        self.seal_bytes(&json)
    }

    pub fn open(&self, envelope: &[u8]) -> Result<Credentials, VaultError> {
        let json = self.open_bytes(envelope)?;
        let map: BTreeMap<String, String> =
            serde_json::from_slice(&json).map_err(|_| VaultError::Malformed)?;
        Ok(Credentials::new(map))
    }

    /// True when the envelope was sealed with an older key (or cannot be read at all).
    pub fn needs_rotation(&self, envelope: &[u8]) -> bool {
        envelope.get(1..1 + KEY_ID_LEN) != Some(&self.current.id[..])
    }

    fn key_for(&self, envelope: &[u8]) -> Result<&VaultKey, VaultError> {
        let id = &envelope[1..1 + KEY_ID_LEN];
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| VaultError::UnknownKey(hex::encode(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: [u8; 32] = [7; 32];
    const KEY_B: [u8; 32] = [9; 32];

    fn creds() -> Credentials {
        Credentials::new(BTreeMap::from([(
            "apiKey".to_string(),
            "key-0123456789-us6".to_string(),
        )]))
    }

    #[test]
    fn round_trip_with_a_fresh_iv_each_time() {
        let vault = Vault::new(&KEY_A, &[]).unwrap_or_else(|e| panic!("{e}"));
        let (one, two) = (vault.seal(&creds()), vault.seal(&creds()));
        assert_ne!(one, two, "the IV must be fresh per encryption");
        assert!(
            !one.windows(10).any(|w| w == b"0123456789"),
            "plaintext must not show through"
        );
        assert_eq!(
            vault
                .open(&one)
                .ok()
                .and_then(|c| c.get("apiKey").map(str::to_string))
                .as_deref(),
            Some("key-0123456789-us6")
        );
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let vault = Vault::new(&KEY_A, &[]).unwrap_or_else(|e| panic!("{e}"));
        let sealed = vault.seal(&creds());
        for i in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut tampered = sealed.clone();
                tampered[i] ^= bit;
                assert!(vault.open(&tampered).is_err(), "byte {i} bit {bit:#x}");
            }
        }
        for len in 0..sealed.len() {
            assert!(vault.open(&sealed[..len]).is_err(), "truncated to {len}");
        }
        let mut extended = sealed.clone();
        extended.push(0);
        assert!(vault.open(&extended).is_err());
    }

    #[test]
    fn an_unknown_key_is_an_error_and_a_previous_key_still_opens() {
        let old = Vault::new(&KEY_A, &[]).unwrap_or_else(|e| panic!("{e}"));
        let sealed = old.seal(&creds());
        let other = Vault::new(&KEY_B, &[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            other.open(&sealed),
            Err(VaultError::UnknownKey(_))
        ));
        let rotated = Vault::new(&KEY_B, &[&KEY_A]).unwrap_or_else(|e| panic!("{e}"));
        assert!(rotated.open(&sealed).is_ok());
        assert!(rotated.needs_rotation(&sealed));
        let resealed = rotated.seal(&rotated.open(&sealed).unwrap_or_default());
        assert!(!rotated.needs_rotation(&resealed));
        assert!(matches!(
            old.open(&resealed),
            Err(VaultError::UnknownKey(_))
        ));
    }

    #[test]
    fn a_tag_forged_under_another_key_with_a_copied_key_id_is_refused() {
        let vault = Vault::new(&KEY_A, &[]).unwrap_or_else(|e| panic!("{e}"));
        let attacker = Vault::new(&KEY_B, &[]).unwrap_or_else(|e| panic!("{e}"));
        let mut forged = attacker.seal(&creds());
        forged[1..5].copy_from_slice(&vault.current.id);
        assert_eq!(vault.open(&forged).err(), Some(VaultError::Tampered));
    }
}

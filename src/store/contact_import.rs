//! Importing contacts: the `ContactImport` trait and `contact_import!(Type, begin: "..",
//! user_lock: "..")`, its implementation for a store with a `pool` field. One page is stored in
//! one transaction; on PostgreSQL an advisory lock per user serialises imports of one user, on
//! SQLite `BEGIN IMMEDIATE` takes the single write lock.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::domain::{
    UserId,
    contact::{ImportCounts, RemoteContact},
};

#[async_trait]
pub trait ContactImport: Send + Sync {
    /// Stores one page of imported contacts in one transaction, matching by user and email
    /// (case-insensitive): a match is updated unless it was edited here after the provider's
    /// change; a new contact is added while the user has fewer than `limit` contacts.
    async fn import_contacts(
        &self,
        user: &UserId,
        contacts: &[RemoteContact],
        limit: Option<u64>,
        now: DateTime<Utc>,
        only_while: Option<ImportGuard<'_>>,
    ) -> Result<ImportCounts, StoreError>;
}

/// Stores an import only while the integration it was read from is still connected to the
/// same destination: an import read before an erasure, a disconnect or a reconnect stores
/// nothing (the check and the writes are one transaction, under the integration's row lock).
#[derive(Debug, Clone, Copy)]
pub struct ImportGuard<'a> {
    pub integration_id: &'a str,
    pub epoch: i64,
}

macro_rules! contact_import {
    ($name:ident, begin: $begin:literal, user_lock: $user_lock:literal, guard: $guard:literal) => {
        const _: () = {
            use chrono::{DateTime, Utc};

            use $crate::{
                domain::{
                    UserId,
                    contact::{ImportCounts, RemoteContact},
                },
                store::{StoreError, contact_import::ContactImport},
            };

            #[async_trait::async_trait]
            impl ContactImport for $name {
                async fn import_contacts(
                    &self,
                    user: &UserId,
                    contacts: &[RemoteContact],
                    limit: Option<u64>,
                    now: DateTime<Utc>,
                    only_while: Option<$crate::store::contact_import::ImportGuard<'_>>,
                ) -> Result<ImportCounts, StoreError> {
                    let mut tx = self.pool.begin_with($begin).await?;
                    if let Some(guard) = only_while {
                        let still: Option<i64> = sqlx::query_scalar($guard)
                            .bind(guard.integration_id)
                            .bind(guard.epoch)
                            .fetch_optional(&mut *tx)
                            .await?;
                        if still.is_none() {
                            return Ok(ImportCounts { stale: true, ..ImportCounts::default() });
                        }
                    }
                    // One import per user at a time adds contacts, so two imports cannot both
                    // add the same address or pass the plan limit together.
                    if !$user_lock.is_empty() {
                        sqlx::query($user_lock).bind(user.as_str()).execute(&mut *tx).await?;
                    }
                    // Counted only under a limit (an unlimited plan never needs it).
                    let mut count = match limit {
                        Some(_) => {
                            // Kept by the database's triggers (usage_counts): one row read.
                            let n: i64 = sqlx::query_scalar(
                                "SELECT COALESCE((SELECT contacts FROM usage_counts WHERE user_id = $1), 0)",
                            )
                                .bind(user.as_str())
                                .fetch_one(&mut *tx)
                                .await?;
                            u64::try_from(n).unwrap_or(0)
                        }
                        None => 0,
                    };
                    // The page's addresses already here: one query, oldest contact first.
                    let emails: Vec<String> = contacts.iter().map(|c| c.email.to_lowercase()).collect();
                    let mut known: std::collections::HashMap<String, (String, DateTime<Utc>)> =
                        std::collections::HashMap::new();
                    // The stored fields of each address, to leave a contact the provider holds
                    // exactly as stored here untouched.
                    let mut stored: std::collections::HashMap<String, [Option<String>; 5]> =
                        std::collections::HashMap::new();
                    if !emails.is_empty() {
                        let placeholders: Vec<String> = (0..emails.len()).map(|i| format!("${}", i + 2)).collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "SELECT id, lower(email), updated_at, first_name, last_name, company, phone, \
                             job_title FROM contacts WHERE user_id = $1 \
                             AND lower(email) IN ({}) ORDER BY created_at DESC, id DESC",
                            placeholders.join(", ")
                        ));
                        type Known = (String, String, DateTime<Utc>, Option<String>, Option<String>,
                            Option<String>, Option<String>, Option<String>);
                        let mut query = sqlx::query_as::<_, Known>(sql).bind(user.as_str());
                        for email in &emails {
                            query = query.bind(email);
                        }
                        // Newest first, so the oldest contact of an address is the one kept.
                        for (id, email, updated_at, first, last, company, phone, title) in
                            query.fetch_all(&mut *tx).await?
                        {
                            stored.insert(id.clone(), [first, last, company, phone, title]);
                            known.insert(email, (id, updated_at));
                        }
                    }
                    let mut counts = ImportCounts::default();
                    let mut inserts: Vec<(String, &RemoteContact)> = Vec::new();
                    for (c, email) in contacts.iter().zip(&emails) {
                        match known.get(email) {
                            Some((_, local)) if c.modified_at.is_none_or(|remote| remote <= *local) => {
                                counts.kept_newer += 1;
                            }
                            Some((id, _)) if stored.get(id).is_some_and(|fields| {
                                $crate::domain::contact::same_fields(c, fields)
                            }) => {
                                counts.unchanged += 1;
                                counts.synced.push((id.clone(), c.fingerprint()));
                            }
                            Some((id, _)) => {
                                // Blank remote fields keep the local value.
                                sqlx::query(
                                    "UPDATE contacts SET first_name = COALESCE($2, first_name), \
                                     last_name = COALESCE($3, last_name), company = COALESCE($4, company), \
                                     phone = COALESCE($5, phone), job_title = COALESCE($6, job_title), \
                                     updated_at = $7 WHERE id = $1",
                                )
                                .bind(id)
                                .bind(c.first_name.as_deref())
                                .bind(c.last_name.as_deref())
                                .bind(c.company.as_deref())
                                .bind(c.phone.as_deref())
                                .bind(c.job_title.as_deref())
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                                counts.updated += 1;
                                counts.synced.push((id.clone(), c.fingerprint()));
                                // A repeat of the address later in the page finds it edited now.
                                known.insert(email.clone(), (id.clone(), now));
                            }
                            None if limit.is_some_and(|max| count >= max) => counts.over_limit += 1,
                            None => {
                                // Time-ordered (UUIDv7): a page's new contacts land side by side
                                // at the end of the id indexes, so a page dirties a few index
                                // pages instead of one per contact wherever a random id falls
                                // (the cost that grew with the table, issue 27).
                                let id = uuid::Uuid::now_v7().to_string();
                                known.insert(email.clone(), (id.clone(), now));
                                counts.synced.push((id.clone(), c.fingerprint()));
                                inserts.push((id, c));
                                count += 1;
                                counts.inserted += 1;
                            }
                        }
                    }
                    if !inserts.is_empty() {
                        // $1 user, $2 now, then 7 values per contact.
                        let rows: Vec<String> = (0..inserts.len())
                            .map(|i| {
                                let p = 3 + i * 7;
                                format!(
                                    "(${}, $1, ${}, ${}, ${}, ${}, ${}, ${}, $2, $2)",
                                    p, p + 1, p + 2, p + 3, p + 4, p + 5, p + 6
                                )
                            })
                            .collect();
                        let sql = sqlx::AssertSqlSafe(format!(
                            "INSERT INTO contacts (id, user_id, email, first_name, last_name, company, \
                             phone, job_title, created_at, updated_at) VALUES {}",
                            rows.join(", ")
                        ));
                        let mut query = sqlx::query(sql).bind(user.as_str()).bind(now);
                        for (id, c) in &inserts {
                            query = query
                                .bind(id)
                                .bind(&c.email)
                                .bind(c.first_name.as_deref())
                                .bind(c.last_name.as_deref())
                                .bind(c.company.as_deref())
                                .bind(c.phone.as_deref())
                                .bind(c.job_title.as_deref());
                        }
                        query.execute(&mut *tx).await?;
                    }
                    tx.commit().await?;
                    Ok(counts)
                }
            }
        };
    };
}

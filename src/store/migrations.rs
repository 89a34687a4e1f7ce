//! The migrations of both dialects, embedded in the binary by `build.rs` (the files of
//! `migrations/postgres` and `migrations/sqlite`). Each is registered exactly as
//! `sqlx::migrate!` would register it (same version, description and SHA-384 checksum of the
//! SQL), so databases migrated by earlier builds are recognised; sqlx's macro crate is not used
//! because it builds both database drivers a second time for the host.

use std::borrow::Cow;

use sqlx::{
    SqlSafeStr,
    migrate::{Migration, MigrationType, Migrator},
};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/migrations.rs"));
}

/// The PostgreSQL migrations.
pub fn postgres() -> Migrator {
    migrator(embedded::POSTGRES)
}

/// The SQLite migrations.
pub fn sqlite() -> Migrator {
    migrator(embedded::SQLITE)
}

fn migrator(files: &'static [(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        files
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    // sqlx's own marker for a migration that must run outside a transaction.
                    sql.starts_with("-- no-transaction"),
                )
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded migrations are the ones `sqlx::migrate!` reads from the folders (it calls
    /// sqlx's `resolve_blocking`): same versions, descriptions, checksums and transaction mode,
    /// so a database migrated by an earlier build is recognised and nothing is skipped.
    #[test]
    fn the_embedded_migrations_are_what_sqlx_reads_from_the_folders() {
        for (dialect, migrator) in [("postgres", postgres()), ("sqlite", sqlite())] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("migrations")
                .join(dialect);
            let from_files =
                sqlx::migrate::resolve_blocking(&dir).unwrap_or_else(|e| panic!("{dialect}: {e}"));
            let embedded: Vec<&Migration> = migrator.iter().collect();
            assert!(from_files.len() >= 8, "{dialect}");
            assert_eq!(embedded.len(), from_files.len(), "{dialect}");
            for (ours, (theirs, path)) in embedded.iter().zip(&from_files) {
                assert_eq!(ours.version, theirs.version, "{path:?}");
                assert_eq!(ours.description, theirs.description, "{path:?}");
                assert_eq!(ours.migration_type, theirs.migration_type, "{path:?}");
                assert_eq!(ours.checksum, theirs.checksum, "{path:?}");
                assert_eq!(ours.no_tx, theirs.no_tx, "{path:?}");
            }
        }
    }
}

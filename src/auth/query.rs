//! auth_query: a client whose user is not in `[[users]]` is looked up in
//! Postgres, as PgBouncer does.
//!
//! pgharbor logs in as the database's `auth_user` to the client's target
//! database and runs `auth_query` with the extended protocol, the user name
//! bound as `$1`. The lookup connection is made from the config alone: it
//! never takes the client's startup parameters, so a client-chosen
//! `search_path` cannot change what the query resolves to (CVE-2025-12819).
//! Answers (a row or its absence) are kept for `auth_query_cache_ttl`;
//! concurrent logins of one user wait for a single lookup. A failed lookup
//! is not kept, and is answered like a missing row: the same 28P01 as a
//! wrong password.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::credential::ServerCredential;
use crate::config::{AuthType, DatabaseConfig, PoolDefaults, UserConfig};
use crate::server::{Server, ServerError, ServerTarget};
use crate::settings::Settings;
use crate::users::UserEntry;

/// Slots kept before unused ones are dropped: unknown names cannot grow
/// the cache without bound.
const MAX_SLOTS: usize = 10_000;

/// Looked-up users, per (database, user).
#[derive(Default)]
pub struct AuthCache {
    slots: Mutex<HashMap<(String, String), Arc<Slot>>>,
}

#[derive(Default)]
struct Slot {
    /// Held by the login doing the lookup; the others wait for its answer.
    answer: tokio::sync::Mutex<Option<Answer>>,
    /// The same across lookups, so the user's pools and its learnt
    /// ClientKey survive a refresh.
    server: Arc<ServerCredential>,
}

struct Answer {
    at: Instant,
    user: Option<Arc<UserEntry>>,
}

impl AuthCache {
    /// The user `name` of `database` as auth_query describes it; `None`
    /// when the database has no auth_user, or no usable row came back.
    pub async fn user(
        &self,
        settings: &Settings,
        database: &str,
        name: &str,
    ) -> Option<Arc<UserEntry>> {
        let (db, pool) = {
            let config = settings.config();
            let db = config.database_for(database)?.into_owned();
            let pool = db.pool_settings(&config.pool);
            (db, pool)
        };
        if pool.auth_user.is_empty() {
            return None;
        }
        let slot = self.slot(database, name);
        let mut answer = slot.answer.lock().await;
        if let Some(a) = answer.as_ref() {
            if a.at.elapsed() < pool.auth_query_cache_ttl {
                return a.user.clone();
            }
        }
        match lookup(settings, &db, &pool, name, &slot.server).await {
            Ok(user) => {
                *answer = Some(Answer {
                    at: Instant::now(),
                    user: user.clone(),
                });
                user
            }
            Err(e) => {
                tracing::warn!(database, user = name, error = %e, "auth_query lookup failed");
                None
            }
        }
    }

    fn slot(&self, database: &str, name: &str) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() >= MAX_SLOTS {
            slots.retain(|_, s| Arc::strong_count(s) > 1);
        }
        slots
            .entry((database.to_owned(), name.to_owned()))
            .or_default()
            .clone()
    }
}

/// Runs auth_query for `name` on a connection of its own.
async fn lookup(
    settings: &Settings,
    db: &DatabaseConfig,
    pool: &PoolDefaults,
    name: &str,
    server: &Arc<ServerCredential>,
) -> Result<Option<Arc<UserEntry>>, ServerError> {
    let Some(auth) = settings.users().get(&pool.auth_user) else {
        return Ok(None);
    };
    let target = ServerTarget::new(db, pool, &auth, settings.tls().server.clone());
    let mut conn = Server::connect(&target, 0).await?;
    let row = conn.query_row_with(&pool.auth_query, name).await;
    let mut bye = bytes::BytesMut::new();
    postgres_protocol::message::frontend::terminate(&mut bye);
    let _ = conn.send(&bye).await;
    let password = row?
        .and_then(|mut columns| columns.get_mut(1).and_then(Option::take))
        .and_then(|p| String::from_utf8(p).ok());
    let Some(password) = password else {
        return Ok(None);
    };
    let auth_type = if password.starts_with("SCRAM-SHA-256$") {
        AuthType::ScramSha256
    } else if password.len() == 35 && password.starts_with("md5") {
        AuthType::Md5
    } else {
        // Not a stored secret Postgres would have written.
        return Ok(None);
    };
    let config = UserConfig {
        name: name.to_owned(),
        password,
        password_env: None,
        password_file: None,
        auth_type,
    };
    Ok(UserEntry::new(config, server.clone()).ok().map(Arc::new))
}

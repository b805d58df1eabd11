//! A client's login to its pool: its startup parameters sorted into the
//! ones the server reports and the others, applied on a server once when
//! they differ from the pool's, and the reply Postgres ends a login with.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::checkout::checkout_error;
use super::session::Session;
use super::startup::LoginRequest;
use crate::config::PoolMode;
use crate::protocol::startup::parse_options;
use crate::protocol::tag::TxStatus;
use crate::protocol::{backend, sqlstate, PgError};
use crate::server::is_read_only_param;

/// What follows the ParameterStatus messages in a login's reply:
/// BackendKeyData (13 bytes) and ReadyForQuery (6).
const LOGIN_REPLY_TAIL: usize = 13 + 6;

/// Records a reported parameter value, copying the shared map only when
/// the value actually changes.
fn set_param(map: &mut Arc<BTreeMap<String, String>>, name: &str, value: &str) {
    if map.get(name).map(String::as_str) != Some(value) {
        Arc::make_mut(map).insert(name.to_string(), value.to_string());
    }
}

/// The known, writable parameters a client sets at login (its startup
/// packet's, then its `options`' in their place), under the names the
/// server reports them by, in the client's order; the unknown ones go to
/// `other`. True when a server must see them (a value other than the
/// template's, or a parameter the template does not report).
fn client_settings<'a>(
    template: &'a BTreeMap<String, String>,
    login: &'a LoginRequest,
    options: &'a [(String, String)],
    other: &mut BTreeMap<String, String>,
) -> (Vec<(&'a str, &'a str)>, bool) {
    let mut settings = Vec::new();
    let mut needs_server = false;
    let wanted = login.params.iter().flat_map(|(k, v)| {
        let opts: &[(String, String)] = if k == "options" { options } else { &[] };
        let plain = (k != "options").then_some((k, v));
        plain
            .into_iter()
            .chain(opts.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    });
    for (k, v) in wanted {
        match template.keys().find(|t| t.eq_ignore_ascii_case(k)) {
            Some(name) if is_read_only_param(name) => {}
            Some(name) => {
                if template.get(name).map(String::as_str) != Some(v) {
                    needs_server = true;
                }
                settings.push((name.as_str(), v));
            }
            None => {
                needs_server = true;
                other.insert(k.to_ascii_lowercase(), v.to_string());
            }
        }
    }
    (settings, needs_server)
}

impl Session {
    /// Applies the startup parameters, then tells the client the parameter
    /// set, its cancel key, and that it is ready.
    pub(super) async fn login(&mut self, login: &LoginRequest) -> Result<(), PgError> {
        let template = self.pool.template_params().await.map_err(checkout_error)?;
        // Clients with default settings share the pool's map (copy on write).
        self.reported = template.clone();
        // `options` (`-c name=value`) is parsed first so that its settings
        // can be borrowed in the client's order below.
        let mut options = Vec::new();
        if let Some(v) = login.params.get("options") {
            options = parse_options(v).map_err(|e| {
                PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid options: {e}"),
                )
            })?;
        }
        let (settings, needs_server) = client_settings(&template, login, &options, &mut self.other);
        // Settings a server already applied for an earlier client of this
        // pool (the application's previous connection) are known good, and
        // what the server reported for them is known: this client is told
        // the same without taking a server. Settings the template does not
        // report are applied at every checkout and are not remembered.
        let rememberable = needs_server && self.other.is_empty() && self.mode != PoolMode::Session;
        let settled = if rememberable {
            self.pool.settled_params(&settings)
        } else {
            None
        };
        let remembered = settled.is_some();
        if let Some(params) = settled {
            self.reported = params;
        } else {
            for (name, v) in &settings {
                set_param(&mut self.reported, name, v);
            }
            if needs_server || self.mode == PoolMode::Session {
                self.apply_settings_at_login().await?;
            }
            self.own_startup = needs_server && self.mode == PoolMode::Session;
        }
        let shared = self.pool.share_params(&self.reported);
        self.reported = shared.map;
        self.login_params = self.reported.clone();
        if rememberable && !remembered {
            self.pool.remember_settled(&settings, self.reported.clone());
        }
        let out = &mut self.io.to_client;
        out.reserve(shared.status.len() + LOGIN_REPLY_TAIL);
        out.extend_from_slice(&shared.status);
        backend::backend_key_data(out, self.cancel.slot.pid(), self.cancel.slot.secret());
        backend::ready_for_query(out, TxStatus::Idle.byte());
        self.txn.status = TxStatus::Idle;
        Ok(())
    }

    /// Applies the client's startup settings on a server once, so a bad one
    /// fails the login as it would on Postgres, and learns the server's
    /// normalized values (`UTF8` for `utf8`).
    async fn apply_settings_at_login(&mut self) -> Result<(), PgError> {
        self.acquire_server().await?;
        if let Some(s) = self.server.as_mut() {
            for (k, v) in s.server.params.iter() {
                set_param(&mut self.reported, k, v);
            }
            if self.mode == PoolMode::Session {
                // The client keeps this server for life: its key carries
                // the server's pid, as Postgres's would.
                self.cancel.adopt_pid(s.server.key.pid);
            }
            // After AuthenticationOk, before ParameterStatus: where
            // Postgres puts the notices of the startup's settings.
            for notice in s.server.sync_notices.drain(..) {
                self.io.to_client.extend_from_slice(&notice);
            }
        }
        if self.mode == PoolMode::Transaction {
            self.release_server(None).await;
        }
        Ok(())
    }
}

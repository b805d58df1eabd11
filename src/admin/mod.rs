//! The admin console (database `pgharbor`, alias `pgbouncer`).

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::client::startup::LoginRequest;
use crate::client::SessionError;
use crate::protocol::{sqlstate, PgError};
use crate::State;

pub async fn serve(
    mut stream: TcpStream,
    _buf: BytesMut,
    login: &LoginRequest,
    state: Arc<State>,
) -> Result<(), SessionError> {
    let is_admin = state
        .config()
        .proxy
        .admin_users
        .iter()
        .any(|u| u == &login.user);
    let e = if is_admin {
        PgError::fatal(
            sqlstate::FEATURE_NOT_SUPPORTED,
            "pgharbor: admin console not built yet",
        )
    } else {
        PgError::fatal(
            sqlstate::INSUFFICIENT_PRIVILEGE,
            format!(
                "pgharbor: user \"{}\" may not use the admin console",
                login.user
            ),
        )
        .with_hint("add the user to proxy.admin_users")
    };
    let mut out = BytesMut::new();
    e.encode(&mut out);
    let _ = stream.write_all(&out).await;
    Err(SessionError::Refused(e))
}

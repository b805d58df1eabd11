//! Opening a server connection: TCP, the SSLRequest and TLS as
//! `[server_tls]` asks, the startup packet, and the authentication Postgres
//! asks for (cleartext, md5, SCRAM with or without channel binding, or SCRAM
//! pass-through with the client's key).

use super::*;

/// The password to send (cleartext or md5), or why there is none.
fn password<'l>(target: &ServerTarget, login: &'l ServerLogin) -> Result<&'l str, ServerError> {
    match login.password.as_deref() {
        Some(p) => Ok(p),
        None if login.verifier_only => Err(ServerError::VerifierOnly(target.user.clone())),
        None => Err(ServerError::NoPassword(target.user.clone())),
    }
}

/// The client side of one SCRAM exchange with a server.
enum SaslClient {
    Password(Box<ScramSha256>),
    Key(Box<KeyClient>),
}

impl SaslClient {
    fn message(&self) -> &[u8] {
        match self {
            SaslClient::Password(s) => s.message(),
            SaslClient::Key(k) => k.message(),
        }
    }

    /// Reads server-first-message. From a password, the salted password
    /// takes thousands of HMAC rounds (milliseconds): off the threads that
    /// serve clients. From a ClientKey it is a few hashes.
    async fn update(self, body: Vec<u8>, user: &str) -> Result<SaslClient, ServerError> {
        match self {
            SaslClient::Password(mut s) => {
                tokio::task::spawn_blocking(move || s.update(&body).map(|()| s))
                    .await
                    .map_err(|e| ServerError::UnsupportedAuth(format!("SCRAM task: {e}")))?
                    .map(SaslClient::Password)
                    .map_err(|e| {
                        ServerError::UnsupportedAuth(format!("SCRAM exchange failed: {e}"))
                    })
            }
            SaslClient::Key(mut k) => match k.update(&body) {
                Ok(()) => Ok(SaslClient::Key(k)),
                Err(source) => Err(ServerError::Scram {
                    user: user.to_owned(),
                    source,
                }),
            },
        }
    }

    fn finish(&mut self, body: &[u8], user: &str) -> Result<(), ServerError> {
        match self {
            SaslClient::Password(s) => s.finish(body).map_err(|e| {
                ServerError::UnsupportedAuth(format!(
                    "server's SCRAM signature did not verify: {e}"
                ))
            }),
            SaslClient::Key(k) => k.finish(body).map_err(|source| ServerError::Scram {
                user: user.to_owned(),
                source,
            }),
        }
    }
}

impl Server {
    /// Opens and authenticates a connection to `endpoint`, one of
    /// `target`'s servers, within `connect_timeout`.
    pub(super) async fn connect_to(
        target: &ServerTarget,
        endpoint: &Endpoint,
        id: u64,
    ) -> Result<Server, ServerError> {
        let login = Self::connect_inner(target, endpoint, id);
        match tokio::time::timeout(target.connect_timeout, login).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::ConnectTimeout {
                addr: endpoint.to_string(),
                timeout: target.connect_timeout,
            }),
        }
    }

    async fn connect_inner(
        target: &ServerTarget,
        endpoint: &Endpoint,
        id: u64,
    ) -> Result<Server, ServerError> {
        let addr_text = endpoint.to_string();
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|source| ServerError::Connect {
                addr: addr_text.clone(),
                source,
            })?;
        stream.set_nodelay(true)?;
        target.tcp.apply(&stream, crate::net::TcpSide::Server);
        let peer = stream.peer_addr()?;
        let stream = negotiate_tls(stream, target, endpoint, &addr_text).await?;
        let cancel_tls = match stream {
            Stream::Tls(_) => cancel::CancelTls::for_target(target, &endpoint.host),
            Stream::Plain(_) => None,
        };
        let mut server = Server {
            cancel_tls,
            stream,
            rbuf: BytesMut::with_capacity(8192),
            params: BTreeMap::new(),
            applied: BTreeMap::new(),
            key: ServerKey {
                addr: peer,
                pid: 0,
                secret: 0,
            },
            id,
            ticket: None,
            created: Instant::now(),
            retire_at: None,
            last_used: Instant::now(),
            status: TxStatus::Idle,
            prepared: Default::default(),
            params_version: 0,
            synced: None,
            sync_notices: Vec::new(),
            session_attrs: TargetSessionAttrs::Any,
        };
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", target.user.as_str()),
                ("database", target.dbname.as_str()),
            ],
            &mut out,
        )?;
        server.send(&out).await?;
        server.authenticate(target).await?;
        // ParameterStatus, BackendKeyData, then ReadyForQuery.
        loop {
            let msg = server.read_message().await?;
            match msg[0] {
                tag::PARAMETER_STATUS => server.note_parameter(&msg[5..]),
                // We start servers at protocol 3.0, so the secret is 4
                // bytes; a longer (3.2) one could not be used truncated.
                tag::BACKEND_KEY_DATA if msg.len() == 13 => {
                    server.key.pid = i32::from_be_bytes([msg[5], msg[6], msg[7], msg[8]]);
                    server.key.secret = i32::from_be_bytes([msg[9], msg[10], msg[11], msg[12]]);
                }
                tag::READY_FOR_QUERY => {
                    server.status = TxStatus::from_ready(msg.get(5).copied());
                    return Ok(server);
                }
                tag::ERROR_RESPONSE => {
                    return Err(ServerError::Login(ServerErrorFields::parse(&msg[5..])))
                }
                _ => {} // NoticeResponse, NegotiateProtocolVersion: nothing to do
            }
        }
    }

    async fn authenticate(&mut self, target: &ServerTarget) -> Result<(), ServerError> {
        let login = target.credential.current();
        let mut scram: Option<SaslClient> = None;
        loop {
            let msg = self.read_message().await?;
            if msg[0] == tag::ERROR_RESPONSE {
                return Err(ServerError::Login(ServerErrorFields::parse(&msg[5..])));
            }
            if msg[0] != tag::AUTHENTICATION || msg.len() < 9 {
                return Err(ProtocolError::Unexpected {
                    tag: msg[0],
                    context: "during server authentication",
                }
                .into());
            }
            let mut body = &msg[5..];
            let code = body.get_i32();
            let mut out = BytesMut::new();
            match code {
                0 => return Ok(()),
                3 => {
                    let pw = password(target, &login)?;
                    frontend::password_message(pw.as_bytes(), &mut out)?;
                }
                5 => {
                    if body.len() < 4 {
                        return Err(ProtocolError::Malformed("AuthenticationMD5Password").into());
                    }
                    let salt = [body[0], body[1], body[2], body[3]];
                    let pw = password(target, &login)?;
                    let hashed = if pw.len() == 35 && pw.starts_with("md5") {
                        crate::auth::md5::md5_salted(pw, salt)
                    } else {
                        postgres_protocol::authentication::md5_hash(
                            target.user.as_bytes(),
                            pw.as_bytes(),
                            salt,
                        )
                    };
                    frontend::password_message(hashed.as_bytes(), &mut out)?;
                }
                10 => {
                    let (mechanism, s) = self.start_sasl(target, &login, body)?;
                    frontend::sasl_initial_response(mechanism, s.message(), &mut out)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram
                        .take()
                        .ok_or(ProtocolError::Malformed("SASL continue without start"))?;
                    let s = s.update(body.to_vec(), &target.user).await?;
                    frontend::sasl_response(s.message(), &mut out)?;
                    scram = Some(s);
                }
                12 => {
                    let s = scram
                        .as_mut()
                        .ok_or(ProtocolError::Malformed("SASL final without start"))?;
                    s.finish(body, &target.user)?;
                    continue;
                }
                other => {
                    return Err(ServerError::UnsupportedAuth(format!(
                        "authentication request code {other}"
                    )))
                }
            }
            self.send(&out).await?;
        }
    }

    /// Picks the SASL mechanism (SCRAM-SHA-256-PLUS over TLS: a man in the
    /// middle, even one whose certificate passed `server_tls.mode`, cannot
    /// relay the login) and the secret: the password, or else the ClientKey
    /// learnt from a client of a user known only by its verifier.
    fn start_sasl(
        &self,
        target: &ServerTarget,
        login: &ServerLogin,
        body: &[u8],
    ) -> Result<(&'static str, SaslClient), ServerError> {
        let mechs = String::from_utf8_lossy(body);
        let offered = |name: &str| mechs.split('\0').any(|m| m == name);
        let end_point = offered("SCRAM-SHA-256-PLUS")
            .then(|| self.stream.peer_end_point())
            .flatten();
        let mechanism = match &end_point {
            Some(_) => "SCRAM-SHA-256-PLUS",
            None if offered("SCRAM-SHA-256") => "SCRAM-SHA-256",
            None => {
                return Err(ServerError::UnsupportedAuth(format!(
                    "SASL mechanisms {}",
                    mechs.trim_end_matches('\0').replace('\0', ", ")
                )))
            }
        };
        match (&login.password, &login.client_key) {
            (None, Some(key)) => {
                let client = KeyClient::new(key.clone(), end_point);
                return Ok((mechanism, SaslClient::Key(Box::new(client))));
            }
            (None, None) if login.verifier_only => {
                return Err(ServerError::NoClientKey(target.user.clone()))
            }
            _ => {}
        }
        let binding = match end_point {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::unsupported(),
        };
        let pw = password(target, login)?;
        let client = ScramSha256::new(pw.as_bytes(), binding);
        Ok((mechanism, SaslClient::Password(Box::new(client))))
    }
}

/// The SSLRequest exchange and the TLS handshake, as `target.tls` asks.
async fn negotiate_tls(
    mut tcp: TcpStream,
    target: &ServerTarget,
    endpoint: &Endpoint,
    addr: &str,
) -> Result<Stream, ServerError> {
    let tls = &target.tls;
    let Some(connector) = tls.connector.as_ref() else {
        return Ok(Stream::Plain(tcp));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    tcp.write_all(&request).await?;
    let mut answer = [0u8; 1];
    if tcp.read(&mut answer).await? == 0 {
        return Err(ServerError::Closed);
    }
    match answer[0] {
        b'S' => {}
        b'N' if !tls.requires_tls() => return Ok(Stream::Plain(tcp)),
        b'N' => {
            return Err(ServerError::TlsRefused {
                addr: addr.into(),
                mode: tls.mode.as_str(),
            })
        }
        // An ErrorResponse: a server too old to know SSLRequest.
        other => {
            return Err(ProtocolError::Unexpected {
                tag: other,
                context: "in answer to SSLRequest",
            }
            .into())
        }
    }
    let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|e| {
        ServerError::Tls {
            addr: addr.into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, e),
        }
    })?;
    let stream = connector
        .connect(name, tcp)
        .await
        .map_err(|source| ServerError::Tls {
            addr: addr.into(),
            source,
        })?;
    Ok(Stream::Tls(Box::new(stream.into())))
}

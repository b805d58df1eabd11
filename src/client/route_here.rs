//! The messages pgharbor answers, refuses or drops itself ([`Here`]), and
//! the Queries it may answer: LISTEN and UNLISTEN, a lone DEALLOCATE or
//! DISCARD ALL, and a COMMIT that waits for its LISTENs first. Everything
//! else leaves through `route.rs`'s `send_with_server`.

use super::*;

impl Session {
    /// A message pgharbor answers, refuses or drops itself, or the end of
    /// the session.
    pub(super) async fn answer_here(&mut self, ready: &mut usize, here: Here) -> Flow {
        match here {
            Here::Broken(e) => Flow::Violation(e),
            Here::Skip { len } => {
                let _ = self.io.cbuf.split_to(len);
                Flow::Next
            }
            Here::Terminate => {
                self.forward_ready(*ready);
                *ready = 0;
                // The server stays the client's, cleaned up by `finish`.
                Flow::End(self.flush_server())
            }
            Here::Sync { len } => {
                let _ = self.io.cbuf.split_to(len);
                self.answer_sync_locally().await;
                Flow::Next
            }
            Here::Flush { len } => {
                let _ = self.io.cbuf.split_to(len);
                self.flush_client()
                    .map_or_else(|e| Flow::End(Err(e)), |()| Flow::Next)
            }
            Here::Invalid { tag } => {
                let e = PgError::fatal(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("invalid frontend message type {tag}"),
                );
                Flow::End(self.send_fatal(e).await)
            }
            Here::Prepare(parses) => {
                self.answer_known_parses(parses);
                Flow::Next
            }
            Here::Local { len, action } => {
                self.forward_ready(*ready);
                *ready = 0;
                let _ = self.io.cbuf.split_to(len);
                self.answer_local(*action);
                Flow::Next
            }
            Here::Query(query) => self.query_pgharbor_may_answer(ready, query).await,
        }
    }

    /// A Query pgharbor may answer itself: answered here, or sent
    /// (rewritten when it mixes LISTEN with other statements).
    async fn query_pgharbor_may_answer(&mut self, ready: &mut usize, query: QueryRoute) -> Flow {
        let (len, sql, text) = match query {
            QueryRoute::Listen { len, sql, text } => {
                return match self.listen_query(len, sql, text).await {
                    Ok(Some((len, m))) => self.send_with_server(ready, len, text, Some(m)).await,
                    Ok(None) => self.send_with_server(ready, len, text, None).await,
                    Err(flow) => flow,
                };
            }
            QueryRoute::BeforeCommit { len, sql, text } => {
                self.forward_ready(*ready);
                *ready = 0;
                if let Err(e) = self.flush_server() {
                    return Flow::End(Err(e));
                }
                self.hear_before_commit(&sql, &[]).await;
                (len, sql, text)
            }
            QueryRoute::StatementSql { len, sql, text } => (len, sql, text),
        };
        match self.statement_sql_query(text, &sql, len) {
            Some(flow) => flow,
            None => self.send_with_server(ready, len, text, None).await,
        }
    }

    /// A Query holding LISTEN/UNLISTEN (nothing waits in `ready`):
    /// `Err` when it was answered here or must wait; `Ok` to send it, with
    /// its new length and the plan of its statements when it was rewritten.
    async fn listen_query(
        &mut self,
        len: usize,
        sql: String,
        text: TextFacts,
    ) -> Result<Option<(usize, Box<MixedQuery>)>, Flow> {
        // What went before must reach the server before waiting.
        if let Err(e) = self.flush_server() {
            return Err(Flow::End(Err(e)));
        }
        match self.intercept_listen(sql.clone()).await {
            Intercept::Handled => {
                let _ = self.io.cbuf.split_to(len);
                Err(Flow::Next)
            }
            Intercept::Wait => Err(Flow::Pause),
            Intercept::Forward => match self.statement_sql_query(text, &sql, len) {
                Some(flow) => Err(flow),
                None => Ok(None),
            },
            Intercept::Rewrite(m) => {
                let cmds: Vec<_> = m.commands().cloned().collect();
                self.hear_before_commit(&m.text, &cmds).await;
                let len = self.rewrite_mixed_query(len, &m);
                Ok(Some((len, m)))
            }
        }
    }

    /// pgharbor's answer to a lone DEALLOCATE or DISCARD ALL at the front
    /// of `cbuf` (nothing waits in `ready`); `None` when the Query goes to
    /// the server.
    fn statement_sql_query(&mut self, text: TextFacts, sql: &str, len: usize) -> Option<Flow> {
        if !text.names_statements {
            return None;
        }
        match self.intercept_statement_sql(sql) {
            Intercept::Handled => {
                let _ = self.io.cbuf.split_to(len);
                Some(Flow::Next)
            }
            Intercept::Wait => Some(Flow::Pause),
            // Only LISTEN texts are rewritten.
            Intercept::Forward | Intercept::Rewrite(_) => None,
        }
    }
}

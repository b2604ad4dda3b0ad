//! AUTHENTICATE: the SASL exchanges (PLAIN, SCRAM-SHA-256), the password check, the
//! failed-login pause and what a login switches on (telemetry, the identity).

use std::time::Duration;

use super::connection::ClientStream;
use super::notices::{bad, no, ok};
use super::session::{Flow, SaslExchange, SaslStep, Session};
use super::telemetry::{TelemetryCounters, TelemetryLog};
use crate::auth::{AuthFailure, Identity, scram};
use crate::protocol::SaslResponse;
use crate::protocol::response::{self, Status, Text};
use crate::protocol::sasl;

impl<IO: ClientStream> Session<IO> {
    pub(super) async fn authenticate(
        &mut self,
        tag: Vec<u8>,
        mechanism: Vec<u8>,
        initial_response: Option<Vec<u8>>,
    ) -> std::io::Result<Flow> {
        if self.identity.is_some() {
            bad(&mut self.out, &tag, "already authenticated");
            return Ok(Flow::Continue);
        }
        if let Some(peer) = self.peer
            && self.ctx.failed_logins.blocked(peer.ip())
        {
            tracing::warn!(%peer, "badlogin: {} too many failed logins; refused unchecked", peer.ip());
            self.ctx.metrics.command("AUTHENTICATE", "no");
            self.ctx.metrics.auth_failures.inc();
            let pause = self.ctx.settings.failed_login_pause;
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            no(&mut self.out, &tag, "too many failed logins");
            return Ok(Flow::Continue);
        }
        if !self.ctx.auth.offers(&mechanism, self.conn.tls()) {
            tracing::info!(
                mechanism = %String::from_utf8_lossy(&mechanism),
                offered = ?self.ctx.auth.mechanisms(self.conn.tls()),
                "login failed: mechanism not offered"
            );
            self.login_failed(&tag).await;
            return Ok(Flow::Continue);
        }
        let scram = mechanism.eq_ignore_ascii_case(scram::MECHANISM.as_bytes());
        match (scram, initial_response) {
            (false, Some(response)) => self.check_login(&tag, &response).await?,
            (true, Some(response)) => self.scram_first(tag, &response).await?,
            // An empty first challenge: a bare line end, no `+ ` (spec §4.2).
            (false, None) => self.challenge(b"", tag, SaslStep::Plain).await?,
            (true, None) => self.challenge(b"", tag, SaslStep::ScramFirst).await?,
        }
        Ok(Flow::Continue)
    }

    /// Sends a challenge (base64, one line) and waits for the client's response line.
    async fn challenge(
        &mut self,
        data: &[u8],
        tag: Vec<u8>,
        step: SaslStep,
    ) -> std::io::Result<()> {
        sasl::encode_line(&mut self.out, data);
        self.flush().await?;
        self.parser.expect_sasl_response();
        self.sasl = Some(SaslExchange { tag, step });
        Ok(())
    }

    /// SCRAM-SHA-256's client-first message (base64) arrived.
    async fn scram_first(&mut self, tag: Vec<u8>, response: &[u8]) -> std::io::Result<()> {
        let started = match sasl::decode_line(response) {
            Ok(message) => self.ctx.auth.scram_start(&message).await,
            Err(_) => Err(AuthFailure::Malformed),
        };
        match started {
            Ok((pending, server_first)) => {
                let step = SaslStep::ScramFinal(Box::new(pending));
                self.challenge(&server_first, tag, step).await
            }
            Err(failure) => {
                self.bad_login(&tag, &failure, scram::MECHANISM).await;
                Ok(())
            }
        }
    }

    pub(super) async fn finish_sasl(&mut self, answer: SaslResponse) -> std::io::Result<Flow> {
        let Some(SaslExchange { tag, step }) = self.sasl.take() else {
            return Ok(Flow::Continue);
        };
        let line = match answer {
            SaslResponse::Cancel => {
                self.ctx.metrics.command("AUTHENTICATE", "no");
                response::tagged(
                    &mut self.out,
                    &tag,
                    Status::No,
                    Text::Bare(b"Client canceled authentication"),
                );
                return Ok(Flow::Continue);
            }
            SaslResponse::Line(line) => line,
        };
        match step {
            SaslStep::Plain => self.check_login(&tag, &line).await?,
            SaslStep::ScramFirst => self.scram_first(tag, &line).await?,
            SaslStep::ScramFinal(pending) => {
                let finished = match sasl::decode_line(&line) {
                    Ok(message) => self.ctx.auth.scram_finish(&pending, &message),
                    Err(_) => Err(AuthFailure::Malformed),
                };
                match finished {
                    Ok((server_final, identity)) => {
                        self.challenge(&server_final, tag, SaslStep::ScramAck(identity))
                            .await?
                    }
                    Err(failure) => self.bad_login(&tag, &failure, scram::MECHANISM).await,
                }
            }
            // The client has checked our signature; it answers with an empty line.
            SaslStep::ScramAck(identity) if line.is_empty() || line == b"=" => {
                self.logged_in(&tag, identity, scram::MECHANISM).await?
            }
            SaslStep::ScramAck(_) => {
                self.bad_login(&tag, &AuthFailure::Malformed, scram::MECHANISM)
                    .await
            }
        }
        Ok(Flow::Continue)
    }

    async fn check_login(&mut self, tag: &[u8], response: &[u8]) -> std::io::Result<()> {
        match self.ctx.auth.login_plain(response).await {
            Ok(identity) => self.logged_in(tag, identity, "PLAIN").await?,
            Err(failure) => self.bad_login(tag, &failure, "PLAIN").await,
        }
        Ok(())
    }

    /// A successful login: OK, then the session is authenticated (and may be logged).
    async fn logged_in(
        &mut self,
        tag: &[u8],
        identity: Identity,
        mechanism: &str,
    ) -> std::io::Result<()> {
        self.ctx.metrics.command("AUTHENTICATE", "ok");
        self.login_slot = None;
        if let Some(peer) = self.peer {
            self.ctx.failed_logins.clear(peer.ip());
        }
        ok(&mut self.out, tag, "Authenticated");
        // Nothing up to and including the login's OK is logged (spec §4.3).
        self.flush().await?;
        tracing::info!(
            user = %identity.authzid,
            authcid = %identity.authcid,
            peer = ?self.peer,
            mechanism,
            "login: {} {} {mechanism} User logged in",
            self.peer.map(|p| p.ip().to_string()).unwrap_or_default(),
            identity.authzid
        );
        if let Some(log) = TelemetryLog::open(
            &self.ctx.settings.config_directory,
            &identity.authzid,
            &self.ctx.settings.service_name,
            TelemetryCounters {
                writes: self.ctx.metrics.telemetry_writes.clone(),
                errors: self.ctx.metrics.telemetry_errors.clone(),
            },
        ) {
            self.conn.set_telemetry(log);
        }
        self.identity = Some(identity);
        Ok(())
    }

    /// A failed login, logged as Cyrus admins expect, answered after the pause.
    async fn bad_login(&mut self, tag: &[u8], failure: &AuthFailure, mechanism: &str) {
        tracing::info!(
            reason = %failure,
            peer = ?self.peer,
            mechanism,
            "badlogin: {} {mechanism} {failure}",
            self.peer.map(|p| p.ip().to_string()).unwrap_or_default()
        );
        self.login_failed(tag).await;
    }

    async fn login_failed(&mut self, tag: &[u8]) {
        self.ctx.metrics.command("AUTHENTICATE", "no");
        self.ctx.metrics.auth_failures.inc();
        if let Some(peer) = self.peer {
            self.ctx.failed_logins.record(peer.ip());
        }
        let pause: Duration = self.ctx.settings.failed_login_pause;
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        // Cyrus passes the wrong code to its SASL error function: the text never varies.
        no(&mut self.out, tag, "undefined error!");
    }
}

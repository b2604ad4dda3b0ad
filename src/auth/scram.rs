//! SASL SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, sans I/O: the password never
//! crosses the wire, and the server keeps only a verifier (salt, iterations, StoredKey,
//! ServerKey). Channel binding is not offered (`n` or `y` GS2 flags only).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The mechanism's name.
pub const MECHANISM: &str = "SCRAM-SHA-256";

/// Iterations for new verifiers (RFC 7677 asks for at least 4096).
pub const DEFAULT_ITERATIONS: u32 = 4096;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut mac = HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// What the server stores for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: Vec<u8>,
    /// H(ClientKey).
    pub stored_key: [u8; 32],
    /// HMAC(SaltedPassword, "Server Key").
    pub server_key: [u8; 32],
}

impl Verifier {
    /// Derives the verifier of `password`.
    pub fn from_password(password: &[u8], salt: &[u8], iterations: u32) -> Verifier {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Whether `password` is the one this verifier was made from (a PLAIN login).
    pub fn matches(&self, password: &[u8]) -> bool {
        let other = Verifier::from_password(password, &self.salt, self.iterations);
        bool::from(other.stored_key.ct_eq(&self.stored_key))
    }

    /// `<iterations>$<salt>$<StoredKey>$<ServerKey>`, base64 (the passwd-file data).
    pub fn encode(&self) -> String {
        format!(
            "{}${}${}${}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }

    /// The inverse of [`Verifier::encode`].
    pub fn decode(text: &str) -> Option<Verifier> {
        let mut parts = text.trim().split('$');
        let iterations = parts.next()?.parse().ok().filter(|i| *i > 0)?;
        let salt = STANDARD.decode(parts.next()?).ok()?;
        let stored_key = STANDARD.decode(parts.next()?).ok()?.try_into().ok()?;
        let server_key = STANDARD.decode(parts.next()?).ok()?.try_into().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Verifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

/// Why an exchange failed; the client is told only that it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// A message does not follow the grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was asked for; it is not offered.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// The client's nonce does not continue the server's.
    #[error("nonce mismatch")]
    Nonce,
    /// The proof is wrong: the wrong password, or no such user.
    #[error("wrong proof")]
    Proof,
}

/// The client's first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user to authenticate (`n=`), unescaped.
    pub authcid: String,
    /// The identity to act as (`a=`), when given.
    pub authzid: Option<String>,
    gs2_header: String,
    bare: String,
    nonce: String,
}

/// `=2C` and `=3D` back to `,` and `=`; any other `=` is malformed.
fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        match rest.get(at..at + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in a name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `gs2-header client-first-message-bare`.
pub fn parse_client_first(message: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut fields = text.splitn(3, ',');
    let flag = fields.next().ok_or(ScramError::Malformed("no GS2 flag"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad GS2 flag")),
    }
    let authzid = match fields
        .next()
        .ok_or(ScramError::Malformed("no GS2 authzid"))?
    {
        "" => None,
        a => Some(unescape_name(
            a.strip_prefix("a=")
                .ok_or(ScramError::Malformed("bad GS2 authzid"))?,
        )?),
    };
    let bare = fields
        .next()
        .ok_or(ScramError::Malformed("no bare message"))?;
    let gs2_header = text[..text.len() - bare.len()].to_owned();
    let mut attributes = bare.split(',');
    let user = attributes
        .next()
        .and_then(|a| a.strip_prefix("n="))
        .ok_or(ScramError::Malformed("no user name"))?;
    let nonce = attributes
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b','))
        .ok_or(ScramError::Malformed("no nonce"))?;
    let authcid = unescape_name(user)?;
    if authcid.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(ClientFirst {
        authcid,
        authzid,
        gs2_header,
        bare: bare.to_owned(),
        nonce: nonce.to_owned(),
    })
}

/// An exchange after the server's first message, waiting for the client's final one.
#[derive(Debug, Clone)]
pub struct Pending {
    client: ClientFirst,
    server_first: String,
    nonce: String,
    verifier: Verifier,
}

impl Pending {
    /// The server's first message for `client`, with `server_nonce` (printable, no comma)
    /// appended to the client's, and the user's `verifier`. For an unknown user, pass a
    /// verifier made from a random password: the exchange then fails at the proof, as for a
    /// wrong password, and says nothing about which users exist.
    pub fn start(
        client: ClientFirst,
        server_nonce: &str,
        verifier: Verifier,
    ) -> (Pending, Vec<u8>) {
        let nonce = format!("{}{server_nonce}", client.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        let message = server_first.clone().into_bytes();
        (
            Pending {
                client,
                server_first,
                nonce,
                verifier,
            },
            message,
        )
    }

    /// The user being authenticated.
    pub fn client(&self) -> &ClientFirst {
        &self.client
    }

    /// Checks the client's final message; on success returns the server's final message
    /// (`v=<ServerSignature>`), which proves to the client that the server knows the key.
    pub fn finish(&self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attributes = without_proof.split(',');
        let binding = attributes
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let expected_binding = STANDARD.encode(&self.client.gs2_header);
        if binding != expected_binding {
            return Err(ScramError::Malformed(
                "channel binding does not match the GS2 header",
            ));
        }
        let nonce = attributes
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof"))?;
        let auth_message = format!("{},{},{without_proof}", self.client.bare, self.server_first);
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (key, (p, s)) in client_key
            .iter_mut()
            .zip(proof.iter().zip(client_signature))
        {
            *key = p ^ s;
        }
        let stored_key: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored_key.ct_eq(&self.verifier.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)).into_bytes())
    }
}

/// The client side, for our slave's link and for tests: the final message for `password`
/// given the server's first message; returns it and the server signature to expect.
pub fn client_final(
    client_first_bare: &str,
    gs2_header: &str,
    server_first: &str,
    password: &[u8],
) -> Result<(String, String), ScramError> {
    let mut nonce = None;
    let mut salt = None;
    let mut iterations = None;
    for attribute in server_first.split(',') {
        match attribute.split_at_checked(2) {
            Some(("r=", v)) => nonce = Some(v),
            Some(("s=", v)) => salt = STANDARD.decode(v).ok(),
            Some(("i=", v)) => iterations = v.parse::<u32>().ok().filter(|i| *i > 0),
            _ => {}
        }
    }
    let (nonce, salt, iterations) = match (nonce, salt, iterations) {
        (Some(n), Some(s), Some(i)) => (n, s, i),
        _ => return Err(ScramError::Malformed("server-first message")),
    };
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password, &salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key: [u8; 32] = Sha256::digest(client_key).into();
    let without_proof = format!("c={},r={nonce}", STANDARD.encode(gs2_header));
    let auth_message = format!("{client_first_bare},{server_first},{without_proof}");
    let signature = hmac(&stored_key, auth_message.as_bytes());
    let proof: Vec<u8> = client_key
        .iter()
        .zip(signature)
        .map(|(k, s)| k ^ s)
        .collect();
    let server_signature = hmac(&hmac(&salted, b"Server Key"), auth_message.as_bytes());
    Ok((
        format!("{without_proof},p={}", STANDARD.encode(proof)),
        format!("v={}", STANDARD.encode(server_signature)),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example exchange, byte for byte.
    #[test]
    fn rfc7677_example() {
        let verifier = Verifier::from_password(
            b"pencil",
            &STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        );
        let client = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(client.authcid, "user");
        let (pending, server_first) =
            Pending::start(client, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0", verifier.clone());
        assert_eq!(
            server_first,
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let final_message = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            pending.finish(final_message).unwrap(),
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        let (ours, signature) = client_final(
            "n=user,r=rOprNGfwEbeRWgbNEkqO",
            "n,,",
            std::str::from_utf8(&server_first).unwrap(),
            b"pencil",
        )
        .unwrap();
        assert_eq!(ours.as_bytes(), final_message);
        assert_eq!(signature, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
        assert!(verifier.matches(b"pencil") && !verifier.matches(b"pen"));
        assert_eq!(Verifier::decode(&verifier.encode()), Some(verifier));
    }

    #[test]
    fn bad_messages_are_refused() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=user,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,n=,r=abc",
            b"n,,n=user",
            b"n,,n=us=er,r=abc",
            b"x,,n=user,r=abc",
            b"n,b=x,n=user,r=abc",
        ] {
            assert!(parse_client_first(bad).is_err(), "{bad:?}");
        }
        let client = parse_client_first(b"n,a=bob,n=a=2Cb=3Dc,r=abc").unwrap();
        assert_eq!(client.authcid, "a,b=c");
        assert_eq!(client.authzid.as_deref(), Some("bob"));
        let verifier = Verifier::from_password(b"pw", b"salt", 4096);
        let (pending, _) = Pending::start(client, "xyz", verifier);
        assert_eq!(
            pending.finish(b"c=biws,r=abcxyz,p=AAAA"),
            Err(ScramError::Malformed(
                "channel binding does not match the GS2 header"
            ))
        );
        assert!(pending.finish(b"garbage").is_err());
    }
}

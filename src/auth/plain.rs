//! SASL PLAIN (RFC 4616): `[authzid] NUL authcid NUL password`.

/// The three fields of a PLAIN message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainCredentials {
    /// Authorisation identity; the authentication identity when the client sent none.
    pub authzid: String,
    /// Authentication identity.
    pub authcid: String,
    /// Password.
    pub password: Vec<u8>,
}

/// Parses a decoded PLAIN message; `None` when it is malformed.
pub fn parse(message: &[u8]) -> Option<PlainCredentials> {
    let mut parts = message.split(|&b| b == 0);
    let authzid = parts.next()?;
    let authcid = parts.next()?;
    let password = parts.next()?;
    if parts.next().is_some() || authcid.is_empty() {
        return None;
    }
    let authcid = String::from_utf8(authcid.to_vec()).ok()?;
    let authzid = if authzid.is_empty() {
        authcid.clone()
    } else {
        String::from_utf8(authzid.to_vec()).ok()?
    };
    Some(PlainCredentials {
        authzid,
        authcid,
        password: password.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        let c = parse(b"\0mupdate\0mupdatepass").unwrap();
        assert_eq!(
            (c.authzid.as_str(), c.authcid.as_str()),
            ("mupdate", "mupdate")
        );
        assert_eq!(c.password, b"mupdatepass");
        let c = parse(b"bob\0mupdate\0pw").unwrap();
        assert_eq!(c.authzid, "bob");
        assert_eq!(parse(b""), None);
        assert_eq!(parse(b"\0\0pw"), None);
        assert_eq!(parse(b"a\0b\0c\0d"), None);
        assert_eq!(parse(b"a\0b"), None);
    }
}

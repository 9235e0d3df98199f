//! Standard Webhooks signatures: how a receiver knows a webhook came from us and was not altered.
//!
//! The scheme is the one published by the Standard Webhooks project, so receivers can verify
//! with any of its libraries: `HMAC-SHA256(secret, "{id}.{timestamp}.{body}")`, base64, sent as
//! `webhook-signature: v1,<sig>`. During a secret rotation every active secret signs and the
//! header carries several space-separated `v1,` entries; a verifier accepts any one of them.
//! Secrets are `whsec_` + base64 of 24..=64 random bytes.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of every signing secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// How far a `webhook-timestamp` may be from the verifier's clock (replay protection).
pub const TOLERANCE_SECONDS: i64 = 5 * 60;
/// Random bytes in a newly generated secret.
const SECRET_BYTES: usize = 32;

/// Why a secret or a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("the secret must be `whsec_` followed by base64 of 24 to 64 bytes")]
    BadSecret,
    #[error("the `{0}` header is missing")]
    MissingHeader(&'static str),
    #[error("the webhook-timestamp header is not a unix time in seconds")]
    BadTimestamp,
    #[error("the webhook-timestamp is more than 5 minutes away from now")]
    TimestampOutOfTolerance,
    #[error("no signature in webhook-signature matches")]
    NoMatch,
}

/// A signing key, held as the HMAC state already keyed with it: the key's two padded blocks
/// are hashed once here rather than on every attempt, and signing clones that state.
#[derive(Clone)]
pub struct SigningKey(Hmac<Sha256>);

/// Length of one `v1,<base64 of 32 bytes>` entry.
const ENTRY_LEN: usize = 3 + 44;

impl SigningKey {
    /// Parses `whsec_<base64>` (the prefix is optional on input, as other libraries allow).
    pub fn parse(secret: &str) -> Result<Self, SignatureError> {
        let raw = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
        let bytes = B64.decode(raw).map_err(|_| SignatureError::BadSecret)?;
        if !(24..=64).contains(&bytes.len()) {
            return Err(SignatureError::BadSecret);
        }
        let mac = Hmac::<Sha256>::new_from_slice(&bytes).expect("HMAC takes any key length");
        Ok(Self(mac))
    }

    /// `v1,<base64 signature>` of one message.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut entry = String::with_capacity(ENTRY_LEN);
        self.sign_into(&mut entry, id, timestamp, body);
        entry
    }

    /// Appends `v1,<base64 signature>` to `out`.
    fn sign_into(&self, out: &mut String, id: &str, timestamp: i64, body: &[u8]) {
        let tag = self.mac(id, timestamp, body).finalize().into_bytes();
        out.push_str("v1,");
        B64.encode_string(tag, out);
    }

    fn mac(&self, id: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(itoa::Buffer::new().format(timestamp).as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    fn verify_one(&self, id: &str, timestamp: i64, body: &[u8], sig_b64: &str) -> bool {
        let Ok(sig) = B64.decode(sig_b64) else {
            return false;
        };
        self.mac(id, timestamp, body).verify_slice(&sig).is_ok()
    }
}

/// A new random secret, `whsec_` + base64 of 32 bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", B64.encode(bytes))
}

/// The `webhook-signature` header value: one `v1,` entry per active key, space-separated.
pub fn signature_header(keys: &[SigningKey], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = String::with_capacity(keys.len() * (ENTRY_LEN + 1));
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            header.push(' ');
        }
        key.sign_into(&mut header, id, timestamp, body);
    }
    header
}

/// Verifies a received webhook: the timestamp is within [`TOLERANCE_SECONDS`] of `now` and one
/// of the `v1,` signatures in `signature` was made with `key` over exactly these bytes.
/// Comparison is constant-time (`Mac::verify_slice`).
pub fn verify(
    key: &SigningKey,
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), SignatureError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    if (now - ts).abs() > TOLERANCE_SECONDS {
        return Err(SignatureError::TimestampOutOfTolerance);
    }
    let matched = signature
        .split(' ')
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .any(|sig| key.verify_one(id, ts, body, sig));
    if matched {
        Ok(())
    } else {
        Err(SignatureError::NoMatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vector published by the Standard Webhooks project (spec and reference libraries).
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TS: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signs_the_published_vector() {
        let key = SigningKey::parse(SECRET).unwrap();
        assert_eq!(key.sign(ID, TS, BODY), EXPECTED);
    }

    #[test]
    fn verifies_the_published_vector_and_refuses_tampering() {
        let key = SigningKey::parse(SECRET).unwrap();
        let ts = TS.to_string();
        assert_eq!(verify(&key, ID, &ts, EXPECTED, BODY, TS + 10), Ok(()));
        let tampered_body = br#"{"test": 2432232315}"#;
        assert_eq!(
            verify(&key, ID, &ts, EXPECTED, tampered_body, TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(&key, "msg_other", &ts, EXPECTED, BODY, TS),
            Err(SignatureError::NoMatch)
        );
        let shifted = (TS + 1).to_string();
        assert_eq!(
            verify(&key, ID, &shifted, EXPECTED, BODY, TS),
            Err(SignatureError::NoMatch)
        );
        assert_eq!(
            verify(&key, ID, &ts, EXPECTED, BODY, TS + TOLERANCE_SECONDS + 1),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify(&key, ID, &ts, EXPECTED, BODY, TS - TOLERANCE_SECONDS - 1),
            Err(SignatureError::TimestampOutOfTolerance)
        );
        assert_eq!(
            verify(&key, ID, "soon", EXPECTED, BODY, TS),
            Err(SignatureError::BadTimestamp)
        );
    }

    #[test]
    fn any_of_several_signatures_may_match() {
        let key = SigningKey::parse(SECRET).unwrap();
        let other = SigningKey::parse(&generate_secret()).unwrap();
        let header = signature_header(&[other.clone(), key.clone()], ID, TS, BODY);
        assert_eq!(header.split(' ').count(), 2);
        assert!(verify(&key, ID, &TS.to_string(), &header, BODY, TS).is_ok());
        assert!(verify(&other, ID, &TS.to_string(), &header, BODY, TS).is_ok());
        let third = SigningKey::parse(&generate_secret()).unwrap();
        assert_eq!(
            verify(&third, ID, &TS.to_string(), &header, BODY, TS),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn secrets_are_well_formed() {
        let s = generate_secret();
        assert!(s.starts_with(SECRET_PREFIX));
        assert!(SigningKey::parse(&s).is_ok());
        assert_ne!(s, generate_secret());
        assert!(SigningKey::parse("whsec_c2hvcnQ=").is_err());
        assert!(SigningKey::parse("whsec_not base64!").is_err());
    }
}

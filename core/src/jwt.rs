//! HS256 JSON Web Tokens, verification side (RFC 7519 / RFC 7515).
//!
//! Supabase clients authenticate with an HS256 JWT (the `apikey` query
//! parameter and the `access_token` join payload), signed with the project's
//! shared secret. Only HS256 is accepted: the algorithm is fixed by us, not
//! chosen by the token, which closes the classic `alg: none` and
//! algorithm-confusion holes. The current time is a parameter, as everywhere
//! in this crate.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// base64url; JWTs omit padding but some encoders add it, and accepting
/// both costs nothing since the signature covers the exact text anyway.
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The verified payload of a token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims(Map<String, Value>);

impl Claims {
    /// Every claim, for callers that need custom ones.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    /// Claims another part of the node already verified (the host checks a
    /// socket's `apikey` before its session starts and hands the claims on).
    pub fn from_verified(claims: Map<String, Value>) -> Claims {
        Claims(claims)
    }

    /// Takes ownership of the claims map.
    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }

    /// The subject (`sub`), the user id in Supabase tokens.
    pub fn sub(&self) -> Option<&str> {
        self.0.get("sub").and_then(Value::as_str)
    }

    /// Expiry (`exp`) in Unix seconds, fractional part dropped.
    pub fn exp(&self) -> Option<u64> {
        self.0.get("exp").and_then(numeric_date)
    }

    /// Supabase's `role` claim (`anon`, `authenticated`, `service_role`).
    pub fn role(&self) -> Option<&str> {
        self.0.get("role").and_then(Value::as_str)
    }
}

/// Why a token was refused. The Display text is sent to clients, so it
/// explains the problem without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtError {
    /// Not three base64url parts of JSON objects; the text says which part.
    Malformed(&'static str),
    /// The header's `alg` is not HS256 (the value, if it was a string).
    UnsupportedAlgorithm(Option<String>),
    /// The signature does not match the secret.
    BadSignature,
    /// `exp` is at or before now.
    Expired { exp: u64 },
    /// `nbf` is after now.
    NotYetValid { nbf: u64 },
    /// `exp` or `nbf` present but not a number.
    InvalidClaim(&'static str),
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwtError::Malformed(what) => write!(f, "malformed JWT: {what}"),
            JwtError::UnsupportedAlgorithm(Some(alg)) => {
                write!(f, "JWT algorithm {alg:?} is not accepted; only HS256 is")
            }
            JwtError::UnsupportedAlgorithm(None) => {
                write!(f, "JWT header has no algorithm; only HS256 is accepted")
            }
            JwtError::BadSignature => write!(f, "JWT signature is invalid"),
            JwtError::Expired { exp } => write!(f, "JWT expired at {exp} (Unix seconds)"),
            JwtError::NotYetValid { nbf } => {
                write!(f, "JWT is not valid before {nbf} (Unix seconds)")
            }
            JwtError::InvalidClaim(claim) => write!(f, "JWT claim {claim} is not a number"),
        }
    }
}

impl std::error::Error for JwtError {}

/// Verifies an HS256 token and returns its claims.
///
/// Order matters: the header is checked first (so a token for another
/// algorithm gets a precise error), then the signature in constant time,
/// and only then is the payload parsed, so unauthenticated JSON is never
/// interpreted. A token without `exp` is accepted (Supabase's long-lived
/// anon keys carry one, but policy belongs to the caller); `exp` must be
/// strictly after `now` and `nbf` at or before it, with no leeway.
pub fn verify_hs256(token: &str, secret: &[u8], now_unix_secs: u64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(sig_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("expected three dot-separated parts"));
    };

    let header = decode_object(
        header_b64,
        "header is not base64url",
        "header is not a JSON object",
    )?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == "HS256" => {}
        Some(Value::String(alg)) => return Err(JwtError::UnsupportedAlgorithm(Some(alg.clone()))),
        _ => return Err(JwtError::UnsupportedAlgorithm(None)),
    }

    let signature = B64URL
        .decode(sig_b64)
        .map_err(|_| JwtError::Malformed("signature is not base64url"))?;
    let signing_input_len = header_b64.len() + 1 + payload_b64.len();
    let signing_input = token
        .get(..signing_input_len)
        .ok_or(JwtError::Malformed("expected three dot-separated parts"))?;
    // HMAC accepts keys of any length, so this never fails; if it did,
    // refusing the token is the safe answer.
    let mut mac = HmacSha256::new_from_slice(secret).map_err(|_| JwtError::BadSignature)?;
    mac.update(signing_input.as_bytes());
    mac.verify_slice(&signature)
        .map_err(|_| JwtError::BadSignature)?;

    let claims = decode_object(
        payload_b64,
        "payload is not base64url",
        "payload is not a JSON object",
    )?;
    if let Some(v) = claims.get("exp") {
        let exp = numeric_date(v).ok_or(JwtError::InvalidClaim("exp"))?;
        if now_unix_secs >= exp {
            return Err(JwtError::Expired { exp });
        }
    }
    if let Some(v) = claims.get("nbf") {
        let nbf = numeric_date(v).ok_or(JwtError::InvalidClaim("nbf"))?;
        if now_unix_secs < nbf {
            return Err(JwtError::NotYetValid { nbf });
        }
    }
    Ok(Claims(claims))
}

/// Signs `claims` with HS256, for tests and operator tools (minting a
/// service-role token for the admin API).
pub fn sign_hs256(claims: &Value, secret: &[u8]) -> String {
    let header = B64URL.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = B64URL.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    // Not client input: the secret is ours, and HMAC takes keys of any length.
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(signing_input.as_bytes());
    let sig = B64URL.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

fn decode_object(
    part: &str,
    not_b64: &'static str,
    not_obj: &'static str,
) -> Result<Map<String, Value>, JwtError> {
    let bytes = B64URL
        .decode(part)
        .map_err(|_| JwtError::Malformed(not_b64))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(JwtError::Malformed(not_obj)),
    }
}

/// A NumericDate (RFC 7519 §2): seconds, possibly fractional. Negative or
/// non-finite values are not valid dates.
fn numeric_date(v: &Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let f = v.as_f64()?;
    if f.is_finite() && f >= 0.0 {
        // Saturating float-to-int cast; dates beyond u64 are "never".
        Some(f as u64)
    } else {
        None
    }
}

use base64::Engine as _;
use chorus_core::jwt::{sign_hs256, verify_hs256, JwtError};
use serde_json::json;

const SECRET: &[u8] = b"super-secret-jwt-token-with-at-least-32-characters-long";
const NOW: u64 = 1_767_225_600;

fn b64(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn signed_token_verifies_and_exposes_typed_claims() {
    let token = sign_hs256(
        &json!({"sub": "user-1", "role": "authenticated", "exp": NOW + 60, "room": 7}),
        SECRET,
    );
    let claims = verify_hs256(&token, SECRET, NOW).unwrap();
    assert_eq!(claims.sub(), Some("user-1"));
    assert_eq!(claims.role(), Some("authenticated"));
    assert_eq!(claims.exp(), Some(NOW + 60));
    assert_eq!(claims.as_map().get("room"), Some(&json!(7)));
}

#[test]
fn verifies_a_token_from_another_implementation() {
    // The well-known jwt.io example token, secret "your-256-bit-secret".
    let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.\
SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
    let claims = verify_hs256(token, b"your-256-bit-secret", NOW).unwrap();
    assert_eq!(claims.sub(), Some("1234567890"));
    assert_eq!(claims.exp(), None);
    assert_eq!(
        verify_hs256(token, b"wrong", NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn expiry_is_exclusive_and_nbf_inclusive() {
    let token = sign_hs256(&json!({"exp": NOW, "nbf": NOW - 10}), SECRET);
    assert_eq!(
        verify_hs256(&token, SECRET, NOW),
        Err(JwtError::Expired { exp: NOW })
    );
    assert!(verify_hs256(&token, SECRET, NOW - 1).is_ok());
    assert!(verify_hs256(&token, SECRET, NOW - 10).is_ok());
    assert_eq!(
        verify_hs256(&token, SECRET, NOW - 11),
        Err(JwtError::NotYetValid { nbf: NOW - 10 })
    );
    let err = verify_hs256(&token, SECRET, NOW + 5).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("JWT expired at {NOW} (Unix seconds)")
    );
}

#[test]
fn fractional_exp_is_accepted_and_non_numeric_rejected() {
    let frac = sign_hs256(&json!({"exp": (NOW as f64) + 0.5}), SECRET);
    assert_eq!(
        verify_hs256(&frac, SECRET, NOW - 1).unwrap().exp(),
        Some(NOW)
    );
    let text = sign_hs256(&json!({"exp": "tomorrow"}), SECRET);
    assert_eq!(
        verify_hs256(&text, SECRET, NOW),
        Err(JwtError::InvalidClaim("exp"))
    );
}

#[test]
fn alg_none_and_other_algorithms_are_rejected() {
    let payload = b64(r#"{"sub":"admin","role":"service_role"}"#);
    let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
    let err = verify_hs256(&none, SECRET, NOW).unwrap_err();
    assert_eq!(err, JwtError::UnsupportedAlgorithm(Some("none".into())));
    assert_eq!(
        err.to_string(),
        "JWT algorithm \"none\" is not accepted; only HS256 is"
    );
    let rs = format!("{}.{payload}.c2ln", b64(r#"{"alg":"RS256"}"#));
    assert_eq!(
        verify_hs256(&rs, SECRET, NOW),
        Err(JwtError::UnsupportedAlgorithm(Some("RS256".into())))
    );
    let missing = format!("{}.{payload}.c2ln", b64(r#"{"typ":"JWT"}"#));
    assert_eq!(
        verify_hs256(&missing, SECRET, NOW),
        Err(JwtError::UnsupportedAlgorithm(None))
    );
}

#[test]
fn tampered_payload_fails_the_signature() {
    let token = sign_hs256(&json!({"role": "anon"}), SECRET);
    let parts: Vec<&str> = token.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(r#"{"role":"service_role"}"#),
        parts[2]
    );
    assert_eq!(
        verify_hs256(&forged, SECRET, NOW),
        Err(JwtError::BadSignature)
    );
}

#[test]
fn malformed_tokens_say_what_is_wrong() {
    let cases = [
        ("", "expected three dot-separated parts"),
        ("a.b", "expected three dot-separated parts"),
        ("a.b.c.d", "expected three dot-separated parts"),
        ("!!!.b.c", "header is not base64url"),
        ("WzFd.b.c", "header is not a JSON object"),
    ];
    for (token, why) in cases {
        assert_eq!(
            verify_hs256(token, SECRET, NOW),
            Err(JwtError::Malformed(why)),
            "{token:?}"
        );
    }
    // A validly signed payload that is not an object.
    let token = sign_hs256(&json!([1, 2]), SECRET);
    assert_eq!(
        verify_hs256(&token, SECRET, NOW).unwrap_err().to_string(),
        "malformed JWT: payload is not a JSON object"
    );
}

proptest::proptest! {
    #[test]
    fn arbitrary_strings_never_panic(s in ".{0,200}") {
        proptest::prop_assert!(verify_hs256(&s, SECRET, NOW).is_err());
    }
}

//! Bearer tokens from anyone: `Authenticator::verify` and the `Authorization` header parser
//! return a principal or a typed error, never panic; a token is accepted only when signed
//! with the configured key, and then its principal is the token's `sub`.
#![no_main]

use std::sync::OnceLock;

use axum::http::{HeaderMap, HeaderValue, header};
use libfuzzer_sys::fuzz_target;
use recstream_commerce::auth::{bearer_token, jsonwebtoken};
use recstream_commerce::config::AuthConfig;
use recstream_commerce::{Authenticator, Secret};

const SECRET: &str = "fuzz-hs256-secret-0123456789";

/// A verifier with the defaults, and one that requires `iss`, `aud` and `token_use`.
fn verifiers() -> &'static [Authenticator; 2] {
    static V: OnceLock<[Authenticator; 2]> = OnceLock::new();
    V.get_or_init(|| {
        let secret = Secret::new(SECRET);
        let strict = AuthConfig {
            issuer: Some("https://issuer".into()),
            audience: vec!["shop".into()],
            token_use: vec!["id".into()],
            ..AuthConfig::default()
        };
        [
            Authenticator::with_jwks(&AuthConfig::default(), Some(&secret), None).unwrap(),
            Authenticator::with_jwks(&strict, Some(&secret), None).unwrap(),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // The raw bytes as a token and as an Authorization header.
    for v in verifiers() {
        if let Ok(p) = v.verify(&text) {
            // Only a token signed with SECRET can verify; random bytes never do.
            panic!("an unsigned input verified as {p:?}");
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value);
        if let Ok(token) = bearer_token(&h) {
            assert!(!token.is_empty());
            let _ = verifiers()[0].verify(token);
        }
    }
    // The bytes as claims, signed with the right key: any claims are judged without a
    // panic, and an accepted token's principal is its `sub`.
    if let Ok(claims) = serde_json::from_slice::<serde_json::Value>(data) {
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        );
        if let Ok(token) = token {
            for v in verifiers() {
                if let Ok(p) = v.verify(&token) {
                    assert_eq!(Some(p.user_id.as_str()), claims["sub"].as_str());
                    assert!(claims["exp"].is_number(), "accepted without exp: {claims}");
                }
            }
        }
    }
});

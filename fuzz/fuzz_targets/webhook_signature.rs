//! `Stripe-Signature` headers from anyone: `webhook::verify` returns the timestamp or a
//! typed error, never panics; it accepts only a header carrying the HMAC of the body under
//! the secret, within the tolerance; and a header `signature_header` made verifies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recstream_commerce::webhook::{SignatureError, sign, signature_header, verify};

const SECRET: &str = "whsec_fuzz_secret";
const NOW: i64 = 1_700_000_000;
const TOLERANCE: u64 = 300;

fuzz_target!(|data: &[u8]| {
    // First line: the header; the rest: the body.
    let (head, body) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let header = String::from_utf8_lossy(head);
    match verify(Some(&header), body, SECRET, NOW, TOLERANCE) {
        Ok(t) => {
            assert!(NOW.abs_diff(t) <= TOLERANCE, "stale timestamp {t} accepted");
            assert!(
                header.contains(&sign(SECRET, t, body)),
                "accepted without the body's signature: {header}"
            );
        }
        Err(
            SignatureError::Missing
            | SignatureError::Malformed
            | SignatureError::NoV1
            | SignatureError::Stale
            | SignatureError::Mismatch,
        ) => {}
    }
    // The genuine header for this body verifies; the same header for another body does not.
    let good = signature_header(SECRET, NOW, body);
    assert_eq!(verify(Some(&good), body, SECRET, NOW, TOLERANCE), Ok(NOW));
    let mut other = body.to_vec();
    other.push(b'x');
    assert_eq!(
        verify(Some(&good), &other, SECRET, NOW, TOLERANCE),
        Err(SignatureError::Mismatch)
    );
});

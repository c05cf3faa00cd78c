//! Structured JWT fuzzing: the input is a JOSE header and a claims set (JSON, split at the first
//! NUL byte; without one, the whole input is the claims under `{"alg":"ES384","kid":KID}`). Both
//! are base64url-encoded and signed with the trusted ES384 key, so every check after the
//! signature (claims parsing, exp/iat/nbf/lifetime, aud, tenant, replay) is reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offramp::auth::AuthError;
use offramp_fuzz::jwt::{Fixture, KID, check_outcome};

fuzz_target!(|data: &[u8]| {
    let default_header = format!(r#"{{"alg":"ES384","kid":"{KID}"}}"#);
    let (header, claims) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (default_header.as_bytes(), data),
    };
    let f = Fixture::get();
    let token = format!("Bearer {}", f.sign(header, claims));
    let r = f.verify(&token);
    check_outcome(&r);
    if r.is_ok() {
        // The replay guard remembers the jti for as long as the token could be accepted.
        assert_eq!(
            f.verify_again(&token).err(),
            Some(AuthError::Replayed),
            "a token accepted twice"
        );
    }
});

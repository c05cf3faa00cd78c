//! The Authorization header through `Verifier::verify`, as the HTTP layer calls it: scheme,
//! size, compact-JWS shape, base64url, JOSE header (alg, kid, jku, crit), the unverified claims
//! that pick the issuer, key lookup, then the signature. Only tokens signed with the fuzz key
//! (the seeds) get past the signature; `jwt_claims` signs whatever it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use offramp_fuzz::jwt::{Fixture, check_outcome};

fuzz_target!(|data: &[u8]| {
    // Header values reach the verifier as &str (HeaderValue::to_str).
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    let f = Fixture::get();
    let r = f.verify(value);
    check_outcome(&r);
    if r.is_ok() {
        assert_eq!(
            f.verify_again(value).err(),
            Some(offramp::auth::AuthError::Replayed),
            "a token accepted twice"
        );
    }
    let _ = offramp::auth::aud::normalise(value);
});

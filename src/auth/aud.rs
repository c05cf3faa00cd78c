//! URL normalisation for `aud` and fhirServer comparisons. Proxies and trailing slashes are the
//! commonest cause of 401s in the field, so both sides are normalised the same way.

/// Lower-cases scheme and host, drops the default port, a trailing slash, query and fragment.
/// Returns None for anything that is not an absolute http(s) URL.
pub fn normalise(url: &str) -> Option<String> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let rest = rest.split(['?', '#']).next().unwrap_or(rest);
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority
        .strip_suffix(default_port)
        .unwrap_or(&authority)
        .to_string();
    let path = path.trim_end_matches('/');
    Some(format!("{scheme}://{authority}{path}"))
}

/// The URL a client should have put in `aud` for `path` (e.g. "/cds-services/offramp-order-sign"):
/// the configured public base URL when there is one; otherwise built from the request's scheme and
/// Host header (local use only; `offramp check-config` warns about it off loopback).
pub fn expected(public_base: Option<&str>, scheme: &str, host: &str, path: &str) -> Option<String> {
    let base = match public_base {
        Some(b) => b.trim_end_matches('/').to_string(),
        None => format!("{scheme}://{host}"),
    };
    normalise(&format!("{base}{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_what_proxies_and_people_change() {
        let want = Some("https://cds.example.org/cds-services/x".to_string());
        for u in [
            "https://cds.example.org/cds-services/x",
            "https://cds.example.org/cds-services/x/",
            "HTTPS://CDS.Example.ORG/cds-services/x",
            "https://cds.example.org:443/cds-services/x",
            "https://cds.example.org/cds-services/x?debug=1",
        ] {
            assert_eq!(normalise(u), want, "{u}");
        }
        assert_ne!(
            normalise("https://cds.example.org/cds-services/X"),
            want,
            "paths are case-sensitive"
        );
        assert_eq!(
            normalise("http://localhost:8080/"),
            Some("http://localhost:8080".into())
        );
        for bad in [
            "",
            "cds.example.org/x",
            "ftp://a/b",
            "https://",
            "https://user@host/x",
        ] {
            assert_eq!(normalise(bad), None, "{bad}");
        }
    }

    #[test]
    fn expected_aud_from_base_or_host() {
        assert_eq!(
            expected(
                Some("https://cds.example.org/offramp/"),
                "http",
                "10.0.0.5:8080",
                "/cds-services/a"
            ),
            Some("https://cds.example.org/offramp/cds-services/a".into())
        );
        assert_eq!(
            expected(None, "http", "127.0.0.1:3000", "/cds-services/a"),
            Some("http://127.0.0.1:3000/cds-services/a".into())
        );
    }
}

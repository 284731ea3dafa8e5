//! `Origin` checks (the MCP transport's DNS-rebinding defence): a browser page may call the
//! gateway only from a loopback origin or one the configuration allows.

/// `value` has the form of a serialized origin: `scheme://host[:port]`, no path.
pub fn is_origin(value: &str) -> bool {
    let Some((scheme, rest)) = value.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' '])
}

/// May a page of `origin` (the `Origin` header's bytes) call the gateway?
pub fn allowed(origin: &[u8], allowed: &[String]) -> bool {
    let Ok(origin) = std::str::from_utf8(origin) else {
        return false;
    };
    let origin = origin.trim();
    is_loopback(origin)
        || allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
}

/// `http(s)://localhost`, `127.0.0.1` or `[::1]`, with any port.
fn is_loopback(origin: &str) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((host, port)) if port.is_empty() || is_port(port) => return host == "::1",
            _ => return false,
        },
        None => match authority.rsplit_once(':') {
            Some((host, port)) if is_port(port) => host,
            Some(_) => return false,
            None => authority,
        },
    };
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1"
}

fn is_port(with_colon: &str) -> bool {
    with_colon
        .strip_prefix(':')
        .unwrap_or(with_colon)
        .parse::<u16>()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_origins_are_allowed_by_default() {
        for o in [
            "http://localhost",
            "http://localhost:6274",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
            "HTTP://LOCALHOST",
        ] {
            assert!(allowed(o.as_bytes(), &[]), "{o}");
        }
        for o in [
            "http://evil.example",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example",
            "http://localhost:99999",
            "file://localhost",
            "null",
            "",
            "http://[::2]",
        ] {
            assert!(!allowed(o.as_bytes(), &[]), "{o}");
        }
        assert!(!allowed(b"http://\xff", &[]));
    }

    #[test]
    fn configured_origins_and_the_wildcard() {
        let list = vec!["https://app.example.com".to_string()];
        assert!(allowed(b"https://app.example.com", &list));
        assert!(allowed(b"https://APP.example.com", &list));
        assert!(!allowed(b"https://app.example.com:444", &list));
        assert!(!allowed(b"http://app.example.com", &list));
        assert!(allowed(b"http://anything", &["*".to_string()]));
    }

    #[test]
    fn origin_syntax() {
        assert!(is_origin("https://app.example.com:8443"));
        assert!(!is_origin("app.example.com"));
        assert!(!is_origin("https://app.example.com/path"));
        assert!(!is_origin("https://"));
    }
}

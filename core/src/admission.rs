//! Who may open a connection, decided before a byte of it is parsed
//! (sans-IO): connections per client IP, connections still sending their
//! request head node-wide, and the browser origins allowed to open a
//! WebSocket.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::config::LimitsConfig;

/// Why a connection was refused; the text names the limit's config key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerIp { limit: u32 },
    Pending { limit: u32 },
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::PerIp { limit } => write!(
                f,
                "too many connections from this address: at most {limit} (limits.max_connections_per_ip)"
            ),
            Refused::Pending { limit } => write!(
                f,
                "too many connections still sending their request: at most {limit} (limits.max_pending_connections)"
            ),
        }
    }
}

/// Counts of open and pending connections.
#[derive(Debug, Default)]
pub struct Admission {
    per_ip: HashMap<IpAddr, u32>,
    pending: u32,
    max_per_ip: u32,
    max_pending: u32,
}

impl Admission {
    pub fn new(limits: &LimitsConfig) -> Admission {
        Admission {
            per_ip: HashMap::new(),
            pending: 0,
            max_per_ip: limits.max_connections_per_ip,
            max_pending: limits.max_pending_connections,
        }
    }

    /// Admits a new connection from `ip` (open and pending), or says why not.
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), Refused> {
        if self.pending >= self.max_pending {
            return Err(Refused::Pending {
                limit: self.max_pending,
            });
        }
        let open = self.per_ip.entry(ip).or_default();
        if *open >= self.max_per_ip {
            return Err(Refused::PerIp {
                limit: self.max_per_ip,
            });
        }
        *open += 1;
        self.pending += 1;
        Ok(())
    }

    /// An admitted connection finished its request head (or gave up).
    pub fn head_done(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// An admitted connection from `ip` closed.
    pub fn closed(&mut self, ip: IpAddr) {
        if let Some(open) = self.per_ip.get_mut(&ip) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Connections still sending their head.
    pub fn pending(&self) -> u32 {
        self.pending
    }

    /// Addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }
}

/// Whether a WebSocket upgrade with this `Origin` header may proceed. An
/// empty allow-list allows all; a client without an `Origin` (not a browser)
/// is never refused by it. Comparison ignores ASCII case and a trailing `/`.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin else {
        return true;
    };
    if allowed.is_empty() {
        return true;
    }
    let norm = |s: &str| s.trim().trim_end_matches('/').to_ascii_lowercase();
    let origin = norm(origin);
    allowed.iter().any(|a| a == "*" || norm(a) == origin)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, pending: u32) -> LimitsConfig {
        LimitsConfig {
            max_connections_per_ip: per_ip,
            max_pending_connections: pending,
            ..LimitsConfig::default()
        }
    }

    #[test]
    fn connections_per_ip_are_capped_and_released() {
        let mut a = Admission::new(&limits(2, 100));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(a.admit(ip), Ok(()));
        assert_eq!(a.admit(ip), Ok(()));
        let refused = a.admit(ip).unwrap_err();
        assert_eq!(refused, Refused::PerIp { limit: 2 });
        assert!(refused
            .to_string()
            .contains("limits.max_connections_per_ip"));
        assert_eq!(a.admit(other), Ok(()), "another address is not affected");
        a.closed(ip);
        assert_eq!(a.admit(ip), Ok(()));
        for _ in 0..2 {
            a.closed(ip);
        }
        a.closed(other);
        assert_eq!(a.addresses(), 0, "no entry kept for closed addresses");
    }

    #[test]
    fn pending_heads_are_capped_node_wide() {
        let mut a = Admission::new(&limits(100, 2));
        let ip = |n: u8| IpAddr::from([10, 0, 0, n]);
        assert_eq!(a.admit(ip(1)), Ok(()));
        assert_eq!(a.admit(ip(2)), Ok(()));
        let refused = a.admit(ip(3)).unwrap_err();
        assert!(refused
            .to_string()
            .contains("limits.max_pending_connections"));
        a.head_done();
        assert_eq!(a.pending(), 1);
        assert_eq!(a.admit(ip(3)), Ok(()));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example.com".to_string()];
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://anything"), &[]));
        assert!(origin_allowed(Some("https://APP.example.com/"), &allowed));
        assert!(!origin_allowed(Some("https://evil.example.com"), &allowed));
        assert!(origin_allowed(Some("https://x"), &["*".to_string()]));
    }
}

/// Paths a WebSocket client may connect to: Supabase's and Phoenix's.
pub const WS_PATHS: &[&str] = &["/realtime/v1/websocket", "/socket/websocket"];

/// An accepted WebSocket upgrade.
#[derive(Debug, Clone, PartialEq)]
pub struct Upgrade {
    pub vsn: crate::phoenix::Vsn,
    /// The verified claims of the socket's `apikey` (auth on).
    pub claims: Option<crate::jwt::Claims>,
    /// The `101 Switching Protocols` response to write.
    pub accept: Vec<u8>,
    /// `permessage-deflate` was agreed (`node.permessage_deflate` and an
    /// offer Chorus can honour, see [`crate::deflate`]).
    pub deflate: bool,
}

/// Decides a WebSocket upgrade request: the `Origin` allow-list (403), the
/// serializer (`vsn`, 400), the `apikey` when auth is on (query or
/// `x-api-key` header, an HS256 JWT; 401) and the handshake itself (400).
/// The error is the response to write before closing.
pub fn upgrade(
    request: &crate::http::Request,
    config: &crate::config::Config,
    now_unix_secs: u64,
) -> Result<Upgrade, crate::http::Response> {
    use crate::http::Response;
    use serde_json::json;
    if !origin_allowed(request.header("origin"), &config.node.allowed_origins) {
        return Err(Response::json(
            403,
            &json!({"error": "origin not allowed (node.allowed_origins)"}),
        ));
    }
    let vsn = crate::phoenix::Vsn::from_param(request.query_param("vsn"))
        .map_err(|e| Response::json(400, &json!({"error": e.to_string()})))?;
    let claims = if config.auth.jwt_secret.is_empty() {
        None
    } else {
        let key = request
            .query_param("apikey")
            .or_else(|| request.header("x-api-key"))
            .ok_or_else(|| Response::json(401, &json!({"error": "missing apikey"})))?;
        let claims =
            crate::jwt::verify_hs256(key, config.auth.jwt_secret.as_bytes(), now_unix_secs)
                .map_err(|e| {
                    Response::json(401, &json!({"error": format!("invalid apikey: {e}")}))
                })?;
        Some(claims)
    };
    let deflate = config.node.permessage_deflate
        && crate::deflate::accepts(request.header_values("sec-websocket-extensions"));
    let accept = crate::ws::accept_upgrade(request, deflate.then_some(crate::deflate::AGREED))
        .map_err(|e| e.to_response())?;
    Ok(Upgrade {
        vsn,
        claims,
        accept,
        deflate,
    })
}

#[cfg(test)]
mod upgrade_tests {
    use super::*;
    use crate::config::Config;
    use crate::http::parse_request;
    use crate::phoenix::Vsn;

    fn request(query: &str, extra: &str) -> crate::http::Request {
        let head = format!(
            "GET /realtime/v1/websocket?{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        parse_request(head.as_bytes(), 8192).unwrap().unwrap().0
    }

    #[test]
    fn permessage_deflate_is_agreed_when_offered_and_on() {
        let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
        let up = upgrade(&request("vsn=2.0.0", offer), &Config::default(), 0).unwrap();
        assert!(up.deflate);
        let head = String::from_utf8(up.accept).unwrap();
        assert!(
            head.contains(&format!(
                "Sec-WebSocket-Extensions: {}\r\n",
                crate::deflate::AGREED
            )),
            "{head}"
        );
        let plain = upgrade(&request("vsn=2.0.0", ""), &Config::default(), 0).unwrap();
        assert!(!plain.deflate);
        assert!(!String::from_utf8(plain.accept)
            .unwrap()
            .contains("Extensions"));
        let mut off = Config::default();
        off.node.permessage_deflate = false;
        let up = upgrade(&request("vsn=2.0.0", offer), &off, 0).unwrap();
        assert!(!up.deflate);
        assert!(!String::from_utf8(up.accept).unwrap().contains("Extensions"));
    }

    #[test]
    fn an_open_node_upgrades_with_the_last_vsn() {
        let up = upgrade(&request("vsn=1.0.0&vsn=2.0.0", ""), &Config::default(), 0).unwrap();
        assert_eq!(up.vsn, Vsn::V2);
        assert!(up.claims.is_none());
        assert!(up.accept.starts_with(b"HTTP/1.1 101"));
        assert_eq!(
            upgrade(&request("vsn=3.0.0", ""), &Config::default(), 0)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn auth_and_origins_are_checked() {
        let mut c = Config::default();
        c.auth.jwt_secret = "s".into();
        c.node.allowed_origins = vec!["https://ok.example".into()];
        assert_eq!(upgrade(&request("", ""), &c, 0).unwrap_err().status, 401);
        let token = crate::jwt::sign_hs256(&serde_json::json!({"sub": "u", "exp": 100}), b"s");
        let up = upgrade(&request(&format!("apikey={token}"), ""), &c, 50).unwrap();
        assert_eq!(up.claims.unwrap().sub(), Some("u"));
        assert_eq!(
            upgrade(&request(&format!("apikey={token}"), ""), &c, 200)
                .unwrap_err()
                .status,
            401,
            "expired"
        );
        let evil = request(
            &format!("apikey={token}"),
            "Origin: https://evil.example\r\n",
        );
        assert_eq!(upgrade(&evil, &c, 50).unwrap_err().status, 403);
        let ok = request(&format!("apikey={token}"), "Origin: https://ok.example\r\n");
        assert!(upgrade(&ok, &c, 50).is_ok());
    }
}

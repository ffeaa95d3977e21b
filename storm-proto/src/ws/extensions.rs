//! `Sec-WebSocket-Extensions` parsing and permessage-deflate negotiation.
//!
//! The header grammar is RFC 6455 section 9.1: a comma-separated list of
//! extensions, each a token followed by `;`-separated parameters, each
//! parameter a token optionally followed by `=` and a token or a
//! quoted-string (whose unescaped content must itself be a token).
//!
//! permessage-deflate (RFC 7692) is negotiated with three functions:
//! [`deflate_offer`] builds what a client offers, [`negotiate_deflate`] is the
//! server picking the first acceptable offer, and [`deflate_response_params`]
//! is the client checking the server's answer against what it offered.
//!
//! Window sizes: RFC 7692 allows 8..=15 bits, but zlib cannot *compress* with
//! a raw 256-byte (8-bit) window, so this end never agrees to compress with 8
//! bits. A server declines an offer that asks it for
//! `server_max_window_bits=8` (the next offer gets its turn); a client fails a
//! response that limits it to `client_max_window_bits=8`. Decompressing data
//! made with an 8-bit window is fine with a 9-bit window, so a server that
//! announces 8 for itself is accepted and recorded as 9.

use std::fmt;

use super::deflate::{DeflateConfig, DeflateParams};

/// The registered name of the permessage-deflate extension.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// One extension from a `Sec-WebSocket-Extensions` list, with its parameters
/// in the order they appeared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// The parameters: name and, when one was given, the value (quoted-string
    /// values are unescaped).
    pub params: Vec<ExtensionParam>,
}

/// One `name` or `name=value` parameter of an [`Extension`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionParam {
    /// The parameter token.
    pub name: String,
    /// The value, if the parameter had `=value`.
    pub value: Option<String>,
}

/// Why an extension header or a permessage-deflate parameter set was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtensionError {
    /// The header value does not follow the RFC 6455 extension-list grammar;
    /// `at` is the byte offset where parsing stopped.
    Syntax {
        /// Byte offset of the offending character.
        at: usize,
    },
    /// A parameter appears twice in one extension.
    DuplicateParam(String),
    /// A parameter this end does not know for the extension.
    UnknownParam(String),
    /// A parameter has a missing, superfluous or out-of-range value.
    InvalidValue(String),
    /// The peer answered with an extension this end did not offer.
    NotOffered(String),
    /// The peer answered with the same extension more than once.
    DuplicateExtension(String),
    /// The server did not accept a parameter this client asked for
    /// (`server_no_context_takeover` or `server_max_window_bits`).
    RequestIgnored(String),
    /// The server asked this client to compress with a window zlib cannot
    /// produce (8 bits) or larger than the client offered.
    UnsupportedWindow(u8),
}

impl fmt::Display for ExtensionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Syntax { at } => write!(f, "malformed extension list at byte {at}"),
            Self::DuplicateParam(p) => write!(f, "extension parameter `{p}` repeated"),
            Self::UnknownParam(p) => write!(f, "unknown extension parameter `{p}`"),
            Self::InvalidValue(p) => write!(f, "invalid value for extension parameter `{p}`"),
            Self::NotOffered(e) => write!(f, "extension `{e}` was not offered"),
            Self::DuplicateExtension(e) => write!(f, "extension `{e}` selected twice"),
            Self::RequestIgnored(p) => write!(f, "server ignored requested parameter `{p}`"),
            Self::UnsupportedWindow(b) => {
                write!(f, "cannot compress with a {b}-bit window as requested")
            }
        }
    }
}

impl std::error::Error for ExtensionError {}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

struct Cursor<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_ows(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    fn err(&self) -> ExtensionError {
        ExtensionError::Syntax { at: self.pos }
    }

    fn token(&mut self) -> Result<String, ExtensionError> {
        let start = self.pos;
        while self.peek().is_some_and(is_tchar) {
            self.pos += 1;
        }
        let tok = self.input.get(start..self.pos).unwrap_or_default();
        if tok.is_empty() {
            return Err(self.err());
        }
        // tchar is ASCII, so this is valid UTF-8.
        Ok(String::from_utf8_lossy(tok).into_owned())
    }

    /// A quoted-string whose unescaped content must be a token (RFC 6455 9.1).
    fn quoted_token(&mut self) -> Result<String, ExtensionError> {
        self.pos += 1; // opening quote
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err()),
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    match self.peek() {
                        Some(b) if is_tchar(b) => out.push(b),
                        _ => return Err(self.err()),
                    }
                    self.pos += 1;
                }
                Some(b) if is_tchar(b) => {
                    out.push(b);
                    self.pos += 1;
                }
                Some(_) => return Err(self.err()),
            }
        }
        if out.is_empty() {
            return Err(ExtensionError::Syntax {
                at: self.pos.saturating_sub(1),
            });
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// Parses one `Sec-WebSocket-Extensions` header value and appends its
/// extensions to `out`, in order. Empty list elements (`a, , b`) are skipped,
/// as HTTP list rules require.
///
/// Linear in the input; allocates only for the names and values found.
///
/// # Errors
///
/// [`ExtensionError::Syntax`] when the value does not follow the grammar
/// (nothing is appended then).
pub fn parse_extensions(value: &[u8], out: &mut Vec<Extension>) -> Result<(), ExtensionError> {
    let mut cur = Cursor {
        input: value,
        pos: 0,
    };
    let mut parsed = Vec::new();
    loop {
        cur.skip_ows();
        match cur.peek() {
            None => break,
            Some(b',') => {
                cur.pos += 1;
                continue;
            }
            Some(_) => {}
        }
        let name = cur.token()?;
        let mut params = Vec::new();
        loop {
            cur.skip_ows();
            match cur.peek() {
                None | Some(b',') => break,
                Some(b';') => cur.pos += 1,
                Some(_) => return Err(cur.err()),
            }
            cur.skip_ows();
            let pname = cur.token()?;
            cur.skip_ows();
            let pvalue = if cur.peek() == Some(b'=') {
                cur.pos += 1;
                cur.skip_ows();
                if cur.peek() == Some(b'"') {
                    Some(cur.quoted_token()?)
                } else {
                    Some(cur.token()?)
                }
            } else {
                None
            };
            params.push(ExtensionParam {
                name: pname,
                value: pvalue,
            });
        }
        parsed.push(Extension { name, params });
    }
    out.append(&mut parsed);
    Ok(())
}

/// The permessage-deflate parameters of one offer or response, checked for
/// duplicates, unknown names and value syntax.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct DeflateRequest {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    /// `Some(bits)`, 8..=15, when present.
    server_max_window_bits: Option<u8>,
    /// `Some(None)` when present without a value (offers only).
    client_max_window_bits: Option<Option<u8>>,
}

fn window_bits(name: &str, value: Option<&str>) -> Result<u8, ExtensionError> {
    // Decimal without leading zeroes, 8..=15.
    match value {
        Some(v @ ("8" | "9" | "10" | "11" | "12" | "13" | "14" | "15")) => v
            .parse()
            .map_err(|_| ExtensionError::InvalidValue(name.into())),
        _ => Err(ExtensionError::InvalidValue(name.into())),
    }
}

/// `response` is true when parsing a server's answer (where
/// `client_max_window_bits` must carry a value).
fn parse_deflate(ext: &Extension, response: bool) -> Result<DeflateRequest, ExtensionError> {
    let mut req = DeflateRequest::default();
    let mut seen = 0u8;
    for p in &ext.params {
        let slot = match p.name.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(ExtensionError::UnknownParam(p.name.clone())),
        };
        if seen & (1 << slot) != 0 {
            return Err(ExtensionError::DuplicateParam(p.name.clone()));
        }
        seen |= 1 << slot;
        let value = p.value.as_deref();
        match slot {
            0 | 1 => {
                if value.is_some() {
                    return Err(ExtensionError::InvalidValue(p.name.clone()));
                }
                if slot == 0 {
                    req.server_no_context_takeover = true;
                } else {
                    req.client_no_context_takeover = true;
                }
            }
            2 => req.server_max_window_bits = Some(window_bits(&p.name, value)?),
            _ => {
                req.client_max_window_bits = match value {
                    None if !response => Some(None),
                    _ => Some(Some(window_bits(&p.name, value)?)),
                }
            }
        }
    }
    Ok(req)
}

/// Clamps a configured window to what zlib can compress with.
fn config_bits(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

/// The `Sec-WebSocket-Extensions` value a client sends to offer
/// permessage-deflate with `config`.
///
/// Always names `client_max_window_bits` (with the configured value when it
/// is below 15) so the server may narrow this client's window; names
/// `server_max_window_bits` only when asking for less than 15, and each
/// `*_no_context_takeover` flag that is set. Window sizes outside 9..=15 are
/// clamped (the handshake configs reject them before this is reached).
#[must_use]
pub fn deflate_offer(config: &DeflateConfig) -> String {
    let mut s = String::from(PERMESSAGE_DEFLATE);
    if config.server_no_context_takeover {
        s.push_str("; server_no_context_takeover");
    }
    if config.client_no_context_takeover {
        s.push_str("; client_no_context_takeover");
    }
    let server_bits = config_bits(config.server_max_window_bits);
    if server_bits < 15 {
        s.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    let client_bits = config_bits(config.client_max_window_bits);
    if client_bits < 15 {
        s.push_str(&format!("; client_max_window_bits={client_bits}"));
    } else {
        s.push_str("; client_max_window_bits");
    }
    s
}

/// What a server agreed to for permessage-deflate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeflateAgreement {
    /// The parameters the connection's codec uses.
    pub params: DeflateParams,
    /// The `Sec-WebSocket-Extensions` value to answer with.
    pub response: String,
}

/// Server side: picks the first permessage-deflate offer in `offers` (in the
/// client's order) that this server can honour under `config`, and returns
/// the parameters plus the response header value. `None` means no offer was
/// acceptable and the connection runs uncompressed.
///
/// Per RFC 7692 an offer with an unknown or repeated parameter or an invalid
/// value is *declined*, not an error. An offer asking for
/// `server_max_window_bits=8` is declined too, since zlib cannot compress with
/// a raw 8-bit window and the server may not use a larger one than asked.
///
/// The answer: `server_no_context_takeover` when the client asked or
/// `config` wants it; `server_max_window_bits` = the smaller of the client's
/// request and `config` (named only when below 15);
/// `client_no_context_takeover` when `config` wants it;
/// `client_max_window_bits` = the smaller of the client's value (if any) and
/// `config`, named only when the client named the parameter and the result
/// is below 15 (and never below 9).
#[must_use]
pub fn negotiate_deflate(config: &DeflateConfig, offers: &[Extension]) -> Option<DeflateAgreement> {
    offers
        .iter()
        .filter(|e| e.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|e| accept_offer(config, e))
}

fn accept_offer(config: &DeflateConfig, offer: &Extension) -> Option<DeflateAgreement> {
    let req = parse_deflate(offer, false).ok()?;
    let server_limit = req.server_max_window_bits.unwrap_or(15);
    if server_limit < 9 {
        return None;
    }
    let server_bits = server_limit.min(config_bits(config.server_max_window_bits));
    let server_nct = req.server_no_context_takeover || config.server_no_context_takeover;
    let client_nct = config.client_no_context_takeover;
    let client_bits = match req.client_max_window_bits {
        None => 15,
        Some(hint) => hint
            .unwrap_or(15)
            .min(config_bits(config.client_max_window_bits))
            .max(9),
    };
    let mut response = String::from(PERMESSAGE_DEFLATE);
    if server_nct {
        response.push_str("; server_no_context_takeover");
    }
    if client_nct {
        response.push_str("; client_no_context_takeover");
    }
    if server_bits < 15 {
        response.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    if client_bits < 15 {
        response.push_str(&format!("; client_max_window_bits={client_bits}"));
    }
    Some(DeflateAgreement {
        params: DeflateParams {
            server_no_context_takeover: server_nct,
            client_no_context_takeover: client_nct,
            server_max_window_bits: server_bits,
            client_max_window_bits: client_bits,
        },
        response,
    })
}

/// Client side: checks the server's permessage-deflate answer against what
/// [`deflate_offer`] offered for `config`, and returns the parameters to use.
///
/// `response` must be the single extension the server selected, named
/// permessage-deflate (the handshake checks the name and count).
///
/// # Errors
///
/// Unknown or repeated parameters, values outside 8..=15, a valueless
/// `client_max_window_bits`, a `server_max_window_bits` larger than asked,
/// a requested server parameter missing from the answer, or a client window
/// of 8 bits or above the one offered.
pub fn deflate_response_params(
    config: &DeflateConfig,
    response: &Extension,
) -> Result<DeflateParams, ExtensionError> {
    let resp = parse_deflate(response, true)?;
    if config.server_no_context_takeover && !resp.server_no_context_takeover {
        return Err(ExtensionError::RequestIgnored(
            "server_no_context_takeover".into(),
        ));
    }
    let asked_server = config_bits(config.server_max_window_bits);
    let server_bits = match resp.server_max_window_bits {
        Some(bits) if bits > asked_server => {
            return Err(ExtensionError::InvalidValue(
                "server_max_window_bits".into(),
            ));
        }
        // An 8-bit stream inflates fine with a 9-bit window.
        Some(bits) => bits.max(9),
        None if asked_server < 15 => {
            return Err(ExtensionError::RequestIgnored(
                "server_max_window_bits".into(),
            ));
        }
        None => 15,
    };
    let offered_client = config_bits(config.client_max_window_bits);
    let client_bits = match resp.client_max_window_bits {
        Some(Some(bits)) if bits < 9 || bits > offered_client => {
            return Err(ExtensionError::UnsupportedWindow(bits));
        }
        Some(Some(bits)) => bits,
        // parse_deflate rejects a valueless one in a response.
        Some(None) | None => offered_client,
    };
    Ok(DeflateParams {
        server_no_context_takeover: resp.server_no_context_takeover,
        client_no_context_takeover: resp.client_no_context_takeover
            || config.client_no_context_takeover,
        server_max_window_bits: server_bits,
        client_max_window_bits: client_bits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<Vec<Extension>, ExtensionError> {
        let mut v = Vec::new();
        parse_extensions(s.as_bytes(), &mut v).map(|()| v)
    }

    fn ext(s: &str) -> Extension {
        let mut v = parse(s).unwrap_or_default();
        assert_eq!(v.len(), 1, "{s}");
        v.remove(0)
    }

    fn p(name: &str, value: Option<&str>) -> ExtensionParam {
        ExtensionParam {
            name: name.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn parses_lists_params_and_quoted_values() {
        let v = parse("permessage-deflate; client_max_window_bits, foo ;a=1;b=\"x\\yz\" , , bar")
            .unwrap_or_default();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].name, "permessage-deflate");
        assert_eq!(v[0].params, vec![p("client_max_window_bits", None)]);
        assert_eq!(v[1].params, vec![p("a", Some("1")), p("b", Some("xyz"))]);
        assert_eq!(v[2].params, vec![]);
        assert_eq!(parse("").map(|v| v.len()), Ok(0));
    }

    #[test]
    fn rejects_bad_syntax() {
        for bad in [
            "a;",
            "a; =1",
            "a;b=",
            "a;b=\"\"",
            "a;b=\"x y\"",
            "a;b=\"unterminated",
            "a b",
            "a;b=1 2",
            ";a",
            "a;b=\"\\\"\"",
            "é",
        ] {
            assert!(
                matches!(parse(bad), Err(ExtensionError::Syntax { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn offer_strings() {
        let c = DeflateConfig::default();
        assert_eq!(
            deflate_offer(&c),
            "permessage-deflate; client_max_window_bits"
        );
        let c = DeflateConfig {
            server_no_context_takeover: true,
            client_no_context_takeover: true,
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        assert_eq!(
            deflate_offer(&c),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=12"
        );
    }

    fn negotiate(config: &DeflateConfig, offers: &str) -> Option<DeflateAgreement> {
        negotiate_deflate(config, &parse(offers).unwrap_or_default())
    }

    #[test]
    fn server_accepts_default_offer() {
        let a = negotiate(
            &DeflateConfig::default(),
            "permessage-deflate; client_max_window_bits",
        );
        assert_eq!(
            a,
            Some(DeflateAgreement {
                params: DeflateParams {
                    server_no_context_takeover: false,
                    client_no_context_takeover: false,
                    server_max_window_bits: 15,
                    client_max_window_bits: 15,
                },
                response: "permessage-deflate".into(),
            })
        );
    }

    #[test]
    fn server_honours_requests_and_narrows_by_config() {
        let config = DeflateConfig {
            client_no_context_takeover: true,
            client_max_window_bits: 11,
            server_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let a = negotiate(
            &config,
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=14; \
             client_max_window_bits=10",
        );
        let a = a.unwrap_or_else(|| unreachable!());
        assert_eq!(
            a.params,
            DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 12,
                client_max_window_bits: 10,
            }
        );
        assert_eq!(
            a.response,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=12; client_max_window_bits=10"
        );
        // Client did not name client_max_window_bits: the server must not either.
        let a = negotiate(&config, "permessage-deflate").unwrap_or_else(|| unreachable!());
        assert_eq!(a.params.client_max_window_bits, 15);
        assert!(!a.response.contains("client_max_window_bits"));
    }

    #[test]
    fn server_declines_bad_offers_and_takes_the_next() {
        let c = DeflateConfig::default();
        for bad in [
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=09",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; foo",
            "x-webkit-deflate-frame",
        ] {
            assert_eq!(negotiate(&c, bad), None, "{bad}");
            let a = negotiate(
                &c,
                &format!("{bad}, permessage-deflate; server_max_window_bits=10"),
            );
            assert_eq!(
                a.map(|a| a.params.server_max_window_bits),
                Some(10),
                "{bad}"
            );
        }
        // Client window hint 8: answer with 9, the smallest we inflate with.
        let a = negotiate(&c, "permessage-deflate; client_max_window_bits=8");
        assert_eq!(a.map(|a| a.params.client_max_window_bits), Some(9));
        // Quoted values are fine.
        let a = negotiate(&c, "permessage-deflate; server_max_window_bits=\"11\"");
        assert_eq!(a.map(|a| a.params.server_max_window_bits), Some(11));
    }

    fn respond(config: &DeflateConfig, s: &str) -> Result<DeflateParams, ExtensionError> {
        deflate_response_params(config, &ext(s))
    }

    #[test]
    fn client_accepts_valid_responses() {
        let c = DeflateConfig::default();
        assert_eq!(
            respond(&c, "permessage-deflate"),
            Ok(DeflateParams {
                server_no_context_takeover: false,
                client_no_context_takeover: false,
                server_max_window_bits: 15,
                client_max_window_bits: 15,
            })
        );
        assert_eq!(
            respond(
                &c,
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=8; client_max_window_bits=9"
            ),
            Ok(DeflateParams {
                server_no_context_takeover: true,
                client_no_context_takeover: true,
                server_max_window_bits: 9,
                client_max_window_bits: 9,
            })
        );
    }

    #[test]
    fn client_rejects_invalid_responses() {
        let c = DeflateConfig {
            server_max_window_bits: 10,
            client_max_window_bits: 12,
            ..DeflateConfig::default()
        };
        let cases: &[(&str, ExtensionError)] = &[
            (
                "permessage-deflate; server_max_window_bits=11",
                ExtensionError::InvalidValue("server_max_window_bits".into()),
            ),
            (
                "permessage-deflate",
                ExtensionError::RequestIgnored("server_max_window_bits".into()),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits",
                ExtensionError::InvalidValue("client_max_window_bits".into()),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=13",
                ExtensionError::UnsupportedWindow(13),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; client_max_window_bits=8",
                ExtensionError::UnsupportedWindow(8),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; bogus",
                ExtensionError::UnknownParam("bogus".into()),
            ),
            (
                "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
                ExtensionError::DuplicateParam("server_max_window_bits".into()),
            ),
        ];
        for (s, e) in cases {
            assert_eq!(respond(&c, s).as_ref(), Err(e), "{s}");
        }
        let c = DeflateConfig {
            server_no_context_takeover: true,
            ..DeflateConfig::default()
        };
        assert_eq!(
            respond(&c, "permessage-deflate"),
            Err(ExtensionError::RequestIgnored(
                "server_no_context_takeover".into()
            ))
        );
    }

    fn arb_config() -> impl Strategy<Value = DeflateConfig> {
        (any::<bool>(), any::<bool>(), 9u8..=15, 9u8..=15).prop_map(|(s, c, sb, cb)| {
            DeflateConfig {
                server_no_context_takeover: s,
                client_no_context_takeover: c,
                server_max_window_bits: sb,
                client_max_window_bits: cb,
                ..DeflateConfig::default()
            }
        })
    }

    proptest! {
        /// Whatever a client offers, a server answers, and the client reads
        /// that answer back to the same parameters.
        #[test]
        fn offer_negotiate_response_agree(client in arb_config(), server in arb_config()) {
            let offers = parse(&deflate_offer(&client)).unwrap_or_default();
            let agreed = negotiate_deflate(&server, &offers);
            let agreed = agreed.unwrap_or_else(|| unreachable!());
            prop_assert!(agreed.params.server_max_window_bits <= client.server_max_window_bits);
            prop_assert!(agreed.params.client_max_window_bits <= client.client_max_window_bits);
            let resp = ext(&agreed.response);
            let params = deflate_response_params(&client, &resp);
            // A client that offered client_no_context_takeover keeps its
            // promise even when the server does not echo it; the server's
            // decompressor keeping its window is harmless then.
            let expected = DeflateParams {
                client_no_context_takeover: agreed.params.client_no_context_takeover
                    || client.client_no_context_takeover,
                ..agreed.params
            };
            prop_assert_eq!(params, Ok(expected));
        }

        #[test]
        fn arbitrary_headers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut v = Vec::new();
            if parse_extensions(&bytes, &mut v).is_ok() {
                let _ = negotiate_deflate(&DeflateConfig::default(), &v);
                for e in &v {
                    let _ = deflate_response_params(&DeflateConfig::default(), e);
                }
            } else {
                prop_assert!(v.is_empty());
            }
        }
    }
}

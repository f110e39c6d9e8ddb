//! Operator-facing prefix parsing: CIDR or a bare address, IPv4 or IPv6.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a prefix was rejected; the message is shown to the operator as is.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PrefixError {
    #[error("invalid prefix '{0}': empty")]
    Empty(String),
    #[error("invalid prefix '{input}': prefix length {len} is longer than {max} for {family}")]
    TooLong {
        input: String,
        len: String,
        max: u8,
        family: &'static str,
    },
    #[error("invalid prefix '{0}': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32")]
    Syntax(String),
}

/// Bad operator input found before the daemon was asked (a usage error:
/// the binary exits with status 2). Client code returns it, directly or as
/// the root cause of an `anyhow` chain, for input it rejects itself; a
/// [`PrefixError`] anywhere in a chain is treated the same way.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct UsageError(pub String);

impl UsageError {
    pub fn new(msg: impl Into<String>) -> Self {
        Self(msg.into())
    }
}

/// Whether an error is the operator's bad input rather than a failure to do
/// the work: any [`UsageError`] or [`PrefixError`] in its chain.
pub fn is_usage_error(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|c| c.is::<UsageError>() || c.is::<PrefixError>())
}

/// Parses `10.0.0.0/8`, `2001:db8::/32`, or a bare address (a /32 or /128).
/// Host bits are allowed and cleared: `10.1.2.3/8` means `10.0.0.0/8`.
pub fn parse_prefix(input: &str) -> Result<IpNet, PrefixError> {
    let s = input.trim();
    if s.is_empty() {
        return Err(PrefixError::Empty(input.to_string()));
    }
    if let Ok(addr) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    Err(diagnose(input, s))
}

/// Turns a failed parse into the most useful message we can give.
fn diagnose(input: &str, s: &str) -> PrefixError {
    if let Some((addr, len)) = s.split_once('/') {
        if let (Ok(addr), Ok(n)) = (addr.parse::<IpAddr>(), len.parse::<u32>()) {
            let (max, family) = match addr {
                IpAddr::V4(_) => (32, "IPv4"),
                IpAddr::V6(_) => (128, "IPv6"),
            };
            if n > max as u32 {
                return PrefixError::TooLong {
                    input: input.to_string(),
                    len: len.to_string(),
                    max,
                    family,
                };
            }
        }
    }
    PrefixError::Syntax(input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_cidr_and_bare_addresses() {
        assert_eq!(
            parse_prefix("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_prefix("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_prefix("2001:db8::1").unwrap().to_string(),
            "2001:db8::1/128"
        );
        assert_eq!(
            parse_prefix("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_prefix("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert_eq!(parse_prefix("::/0").unwrap().to_string(), "::/0");
        assert_eq!(
            parse_prefix(" 10.0.0.1/32 ").unwrap().to_string(),
            "10.0.0.1/32"
        );
    }

    #[test]
    fn clears_host_bits() {
        assert_eq!(
            parse_prefix("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            parse_prefix("2001:db8::5/64").unwrap().to_string(),
            "2001:db8::/64"
        );
    }

    #[test]
    fn usage_errors_are_recognised_through_context() {
        use anyhow::Context;
        let e = parse_prefix("10.0.0.0/33")
            .context("list.txt:3")
            .unwrap_err();
        assert!(is_usage_error(&e));
        assert!(is_usage_error(&anyhow::Error::new(UsageError::new(
            "no prefix given"
        ))));
        assert!(!is_usage_error(&anyhow::anyhow!("daemon refused")));
        let io = std::io::Error::other("boom");
        assert!(!is_usage_error(
            &anyhow::Error::new(io).context("cannot read x")
        ));
    }

    #[test]
    fn rejects_bad_input_with_a_clear_reason() {
        let cases = [
            ("10.0.0.0/33", "invalid prefix '10.0.0.0/33': prefix length 33 is longer than 32 for IPv4"),
            ("::/129", "invalid prefix '::/129': prefix length 129 is longer than 128 for IPv6"),
            ("", "invalid prefix '': empty"),
            ("10.0.0", "invalid prefix '10.0.0': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32"),
            ("10.0.0.0/", "invalid prefix '10.0.0.0/': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32"),
            ("10.0.0.0/-1", "invalid prefix '10.0.0.0/-1': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32"),
            ("256.0.0.0/8", "invalid prefix '256.0.0.0/8': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32"),
            ("example.com", "invalid prefix 'example.com': expected an IPv4 or IPv6 address or CIDR prefix like 192.0.2.0/24 or 2001:db8::/32"),
        ];
        for (input, want) in cases {
            assert_eq!(
                parse_prefix(input).unwrap_err().to_string(),
                want,
                "{input}"
            );
        }
    }
}

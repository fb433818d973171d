//! The client behind a proxy. A gateway behind a load balancer sees the balancer as the peer
//! of every connection, so per-client limits (`limits.rs`) and audit records would treat all
//! clients as one. Proxies the deployment names (`--trusted-proxies`) are believed about the
//! address they saw: `X-Forwarded-For` is read from the right, where the nearest proxy appended
//! its peer, past every trusted proxy, to the first address that is not one. Entries left of
//! it were written by whoever sent the request and are ignored, and so is the header of a peer
//! that is not a trusted proxy: a client cannot choose the address it is counted as.

use std::{
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use http::HeaderMap;

const X_FORWARDED_FOR: &str = "x-forwarded-for";

/// An address block, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a block of one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl IpBlock {
    pub fn contains(&self, address: IpAddr) -> bool {
        match (self.network, address.to_canonical()) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpBlock {
    type Err = String;

    fn from_str(text: &str) -> Result<IpBlock, String> {
        let text = text.trim();
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let written: IpAddr = address
            .parse()
            .map_err(|_| format!("{text:?} is not an address or an address block (a.b.c.d/n)"))?;
        let bits = if written.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            "" => bits,
            digits => digits
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        // Addresses are compared in canonical form, so an IPv4-mapped block (`::ffff:a.b.c.d/n`,
        // n ≥ 96) is the IPv4 block it maps.
        let network = written.to_canonical();
        let prefix = match (written, network) {
            (IpAddr::V6(_), IpAddr::V4(_)) if prefix >= 96 => prefix - 96,
            (IpAddr::V6(_), IpAddr::V4(_)) => {
                return Err(format!(
                    "{text:?}: an IPv4-mapped block needs a prefix length of 96 to 128"
                ));
            }
            _ => prefix,
        };
        Ok(IpBlock { network, prefix })
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The proxies whose `X-Forwarded-For` is believed; none by default.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<IpBlock>);

impl TrustedProxies {
    pub fn new(blocks: Vec<IpBlock>) -> TrustedProxies {
        TrustedProxies(blocks)
    }

    pub(crate) fn trusts(&self, address: IpAddr) -> bool {
        self.0.iter().any(|block| block.contains(address))
    }

    /// The address of the client a request from `peer` was made by: `peer` itself unless it
    /// is a trusted proxy; then the nearest `X-Forwarded-For` entry that is not one (or the
    /// farthest readable one, when every entry is trusted). A malformed entry ends the walk:
    /// the last address read stands.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return peer;
        }
        let mut client = peer;
        // Proxies append: later header lines, and later entries in a line, are nearer.
        for line in headers.get_all(X_FORWARDED_FOR).iter().rev() {
            // Entries are read one by one: bytes that are not text in an entry the client
            // wrote must not make the proxies' entries after it unreadable too.
            for entry in line.as_bytes().rsplit(|byte| *byte == b',') {
                let Some(address) = forwarded_address(entry) else {
                    return client;
                };
                client = address;
                if !self.trusts(address) {
                    return client;
                }
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, perhaps with a port (`[v6]:port` for IPv6).
fn forwarded_address(entry: &[u8]) -> Option<IpAddr> {
    let entry = std::str::from_utf8(entry).ok()?.trim();
    let address = entry
        .parse::<IpAddr>()
        .or_else(|_| entry.parse::<SocketAddr>().map(|socket| socket.ip()))
        .ok()?;
    Some(address.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(text: &str) -> IpBlock {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn blocks_parse_and_contain() {
        assert!(block("10.0.0.0/8").contains(ip("10.200.1.2")));
        assert!(!block("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(block("192.0.2.7").contains(ip("192.0.2.7")));
        assert!(!block("192.0.2.7").contains(ip("192.0.2.8")));
        assert!(block("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(block("2001:db8::/32").contains(ip("2001:db8:ffff::1")));
        assert!(!block("2001:db8::/32").contains(ip("2001:db9::1")));
        // An IPv4 peer on a dual-stack socket is the IPv4 address.
        assert!(block("10.0.0.0/8").contains(ip("::ffff:10.1.2.3")));
        assert!(!block("::/0").contains(ip("10.1.2.3")));
        assert_eq!(block(" 10.1.2.3/8 ").to_string(), "10.1.2.3/8");
        // An IPv4-mapped block is the IPv4 block it maps.
        assert_eq!(block("::ffff:10.0.0.0/104"), block("10.0.0.0/8"));
        assert_eq!(block("::ffff:10.1.2.3"), block("10.1.2.3"));
        assert!(block("::ffff:10.0.0.0/104").contains(ip("10.9.9.9")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "2001:db8::/129",
            "example.com",
            "10/8",
            "::ffff:10.0.0.0/64",
        ] {
            assert!(bad.parse::<IpBlock>().is_err(), "{bad:?}");
        }
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for line in lines {
            headers.append(X_FORWARDED_FOR, line.parse().unwrap());
        }
        headers
    }

    #[test]
    fn the_client_is_the_nearest_address_no_trusted_proxy_wrote() {
        let trusted = TrustedProxies::new(vec![block("10.0.0.0/8")]);
        let lb = ip("10.0.0.5");
        let client = |lines: &[&str]| trusted.client(lb, &headers(lines));
        assert_eq!(client(&["203.0.113.7"]), ip("203.0.113.7"));
        // The client wrote the first entry itself: only what the proxies appended counts.
        assert_eq!(client(&["198.51.100.1, 203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(
            client(&["198.51.100.1, 203.0.113.7, 10.0.0.9"]),
            ip("203.0.113.7")
        );
        assert_eq!(client(&["198.51.100.1", "203.0.113.7"]), ip("203.0.113.7"));
        assert_eq!(client(&["[2001:db8::7]:4431"]), ip("2001:db8::7"));
        assert_eq!(client(&["203.0.113.7:5000"]), ip("203.0.113.7"));
        // Every entry a trusted proxy: the farthest.
        assert_eq!(client(&["10.0.0.8, 10.0.0.9"]), ip("10.0.0.8"));
        // Garbled: the last address read stands.
        assert_eq!(client(&["203.0.113.7, unknown"]), lb);
        assert_eq!(client(&["unknown, 10.0.0.9"]), ip("10.0.0.9"));
        assert_eq!(client(&[]), lb);
        // Bytes that are not text in the client's own entry spoil only that entry.
        let mut obs_text = HeaderMap::new();
        obs_text.append(
            X_FORWARDED_FOR,
            http::HeaderValue::from_bytes(b"caf\xe9, 203.0.113.7").unwrap(),
        );
        assert_eq!(trusted.client(lb, &obs_text), ip("203.0.113.7"));
        // A peer that is not a trusted proxy is the client, whatever it says.
        let stranger = ip("198.51.100.1");
        assert_eq!(
            trusted.client(stranger, &headers(&["203.0.113.7"])),
            stranger
        );
        assert_eq!(
            TrustedProxies::default().client(lb, &headers(&["203.0.113.7"])),
            lb
        );
    }
}

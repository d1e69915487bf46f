//! SSRF protection: which addresses a delivery may connect to. Private,
//! loopback, link-local, shared, multicast and unspecified addresses are
//! refused unless an operator allowed their range. The check runs on the
//! addresses actually connected to (the client's resolver filters them), so a
//! DNS answer that changes after the webhook was created cannot slip past it.

use ipnet::IpNet;
use std::net::IpAddr;

/// True for addresses that are not on the public internet.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, carrier-grade NAT
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, IETF protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240 // reserved
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let o = v6.octets();
            let embedded =
                |at: usize| is_private(IpAddr::from([o[at], o[at + 1], o[at + 2], o[at + 3]]));
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[..6] == [0; 6] && embedded(12)) // IPv4-compatible ::a.b.c.d
                || (s[0] == 0x2002 && embedded(2)) // 6to4: routed to the IPv4 it embeds
                || (s[0] == 0x2001 && s[1] == 0) // Teredo (embeds IPv4, tunnels anywhere)
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated, still routed locally)
                || (s[0] == 0x64 && s[1] == 0xff9b) // NAT64 (embeds IPv4), incl. local-use
                || (s[0] == 0x100 && s[1..4] == [0; 3]) // discard-only 100::/64
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation
                || (s[0] & 0xfff0) == 0x3ff0 // documentation 3fff::/20
        }
    }
}

/// Whether a delivery may connect to `ip`.
pub fn allowed(ip: IpAddr, allow: &[IpNet]) -> bool {
    !is_private(ip) || allow.iter().any(|net| net.contains(&ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_ranges() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "224.0.0.1",
            "::127.0.0.1",
            "::10.0.0.1",
            "2002:7f00:1::",
            "2002:c0a8:101::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "fec0::1",
            "64:ff9b:1::a00:1",
            "100::1",
            "3fff::1",
        ] {
            assert!(is_private(ip(s)), "{s}");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700::1111",
            "172.32.0.1",
            "::8.8.8.8",
            "2002:808:808::1",
        ] {
            assert!(!is_private(ip(s)), "{s}");
        }
    }

    #[test]
    fn allow_list_opens_a_range() {
        let allow: Vec<IpNet> = vec!["127.0.0.0/8".parse().unwrap()];
        assert!(allowed(ip("127.0.0.1"), &allow));
        assert!(!allowed(ip("10.0.0.1"), &allow));
        assert!(allowed(ip("8.8.8.8"), &[]));
    }
}

//! The PROXY protocol header (HAProxy's, versions 1 and 2) that an L4 balancer sends before a
//! connection's own bytes, naming the client it forwards: parsed from the bytes at hand, pure.
//!
//! The reader (`server::worker`) peeks, asks [`parse`] how many bytes the header takes, and
//! reads exactly those, so not one byte of the client's own stream is consumed. What must never
//! happen here: a header accepted that is not exactly one of the two formats, a length that
//! reaches past [`MAX_LEN`], or a panic on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// The version 2 signature.
const SIG_V2: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included (the specification's 107 bytes).
const MAX_V1: usize = 107;
/// The longest version 2 header taken: 16 bytes and up to 1,008 of addresses and TLVs (a
/// balancer's TLVs, such as a VPC endpoint id, take tens of bytes). Longer ones are refused.
pub const MAX_LEN: usize = 1024;

/// What the bytes at hand say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A header may follow but is not whole yet: at least this many bytes are needed in all.
    Need(usize),
    /// A whole header of `len` bytes; `source` is the client it names (`None`: `LOCAL` or
    /// `UNKNOWN`, a connection of the balancer's own, whose peer is the client).
    Done {
        /// Bytes the header takes.
        len: usize,
        /// The client.
        source: Option<SocketAddr>,
    },
}

/// Why the bytes are no PROXY header: the connection is closed unread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bad {
    /// Neither signature: the peer sent no header.
    Missing,
    /// A signature, then something the format does not allow.
    Malformed,
    /// Longer than the format (version 1) or [`MAX_LEN`] (version 2) allows.
    TooLong,
}

/// Parses the header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parsed, Bad> {
    if buf.starts_with(b"PROXY ") {
        return v1(buf);
    }
    let n = buf.len().min(SIG_V2.len());
    if buf[..n] == SIG_V2[..n] {
        return v2(buf);
    }
    if b"PROXY ".starts_with(buf) {
        return Ok(Parsed::Need(6));
    }
    Err(Bad::Missing)
}

/// `PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n`.
fn v1(buf: &[u8]) -> Result<Parsed, Bad> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= MAX_V1 {
            Err(Bad::TooLong)
        } else {
            Ok(Parsed::Need(buf.len() + 1))
        };
    };
    let len = end + 2;
    if len > MAX_V1 {
        return Err(Bad::TooLong);
    }
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| Bad::Malformed)?;
    let parts: Vec<&str> = line.split(' ').collect();
    let source = match parts.as_slice() {
        ["UNKNOWN", ..] => None,
        [fam @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (src, dst): (IpAddr, IpAddr) = (
                src.parse().map_err(|_| Bad::Malformed)?,
                dst.parse().map_err(|_| Bad::Malformed)?,
            );
            let v4 = *fam == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err(Bad::Malformed);
            }
            let port = |p: &str| {
                // Decimal without sign or leading zeros (the format's own rule).
                let ok = !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !(p.len() > 1 && p.starts_with('0'));
                ok.then(|| p.parse::<u16>().ok())
                    .flatten()
                    .ok_or(Bad::Malformed)
            };
            let sport = port(sport)?;
            port(dport)?;
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(Bad::Malformed),
    };
    Ok(Parsed::Done { len, source })
}

/// The binary version 2 header.
fn v2(buf: &[u8]) -> Result<Parsed, Bad> {
    if buf.len() < 16 {
        return Ok(Parsed::Need(16));
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(Bad::Malformed);
    }
    let len = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_LEN {
        return Err(Bad::TooLong);
    }
    if buf.len() < len {
        return Ok(Parsed::Need(len));
    }
    let body = &buf[16..len];
    let source = match ver_cmd & 0x0f {
        // LOCAL: the balancer's own connection (a health check); the peer is the client.
        0 => None,
        // PROXY.
        1 => match buf[13] {
            // TCP or UDP over IPv4: src, dst, sport, dport.
            0x11 | 0x12 => {
                let a = body.get(..12).ok_or(Bad::Malformed)?;
                let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
                Some(SocketAddr::new(
                    IpAddr::V4(ip),
                    u16::from_be_bytes([a[8], a[9]]),
                ))
            }
            // Over IPv6.
            0x21 | 0x22 => {
                let a = body.get(..36).ok_or(Bad::Malformed)?;
                let mut o = [0u8; 16];
                o.copy_from_slice(&a[..16]);
                let ip = Ipv6Addr::from(o);
                Some(SocketAddr::new(
                    IpAddr::V6(ip),
                    u16::from_be_bytes([a[32], a[33]]),
                ))
            }
            // UNSPEC (or a family stickyd does not forward, such as AF_UNIX): no address.
            0x00 => None,
            _ => return Err(Bad::Malformed),
        },
        _ => return Err(Bad::Malformed),
    };
    Ok(Parsed::Done { len, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v2_header(cmd: u8, fam: u8, addr: &[u8], tlv: &[u8]) -> Vec<u8> {
        let mut h = SIG_V2.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        let len = (addr.len() + tlv.len()) as u16;
        h.extend_from_slice(&len.to_be_bytes());
        h.extend_from_slice(addr);
        h.extend_from_slice(tlv);
        h
    }

    #[test]
    fn version_1_headers_name_the_client() {
        let h = b"PROXY TCP4 192.0.2.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Done {
                len: 41,
                source: Some("192.0.2.7:56324".parse().unwrap())
            })
        );
        let h = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Done {
                len: h.len(),
                source: Some("[2001:db8::1]:1".parse().unwrap())
            })
        );
        let h = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(h),
            Ok(Parsed::Done {
                len: 15,
                source: None
            })
        );
        // Not whole yet.
        assert_eq!(parse(b"PROXY TCP4 1.2"), Ok(Parsed::Need(15)));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Need(6)));
    }

    #[test]
    fn version_1_refuses_anything_else() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 10.0.0.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 10.0.0.1 1 2\r\n",
            b"PROXY TCP6 192.0.2.7 10.0.0.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 056324 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 65536 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 -1 443\r\n",
            b"PROXY TCP4  192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY UDP4 192.0.2.7 10.0.0.1 1 443\r\n",
            b"PROXY TCP4 192.0.2.7 10.0.0.1 1 443 \r\n",
        ] {
            assert_eq!(
                parse(bad),
                Err(Bad::Malformed),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}", "1".repeat(200));
        assert_eq!(parse(long.as_bytes()), Err(Bad::TooLong));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Err(Bad::Missing));
        assert_eq!(parse(b"\x16\x03\x01"), Err(Bad::Missing), "a TLS hello");
    }

    #[test]
    fn version_2_headers_name_the_client_and_skip_their_tlvs() {
        let addr4 = [192, 0, 2, 7, 10, 0, 0, 1, 0xdc, 0x04, 0x01, 0xbb];
        let h = v2_header(1, 0x11, &addr4, &[0x04, 0x00, 0x02, b'h', b'i']);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Done {
                len: h.len(),
                source: Some("192.0.2.7:56324".parse().unwrap())
            })
        );
        let mut addr6 = [0u8; 36];
        addr6[..16].copy_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        addr6[32..34].copy_from_slice(&8080u16.to_be_bytes());
        let h = v2_header(1, 0x21, &addr6, &[]);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Done {
                len: 52,
                source: Some("[2001:db8::1]:8080".parse().unwrap())
            })
        );
        // LOCAL: the balancer's own check.
        let h = v2_header(0, 0x00, &[], &[]);
        assert_eq!(
            parse(&h),
            Ok(Parsed::Done {
                len: 16,
                source: None
            })
        );
        // Partial: the fixed part, then the length it announces.
        assert_eq!(parse(&h[..9]), Ok(Parsed::Need(16)));
        let h = v2_header(1, 0x11, &addr4, &[]);
        assert_eq!(parse(&h[..20]), Ok(Parsed::Need(28)));
    }

    #[test]
    fn version_2_refuses_bad_versions_commands_families_and_lengths() {
        let addr4 = [192, 0, 2, 7, 10, 0, 0, 1, 0, 1, 0, 2];
        let mut bad_version = v2_header(1, 0x11, &addr4, &[]);
        bad_version[12] = 0x11;
        let mut bad_cmd = v2_header(1, 0x11, &addr4, &[]);
        bad_cmd[12] = 0x22;
        for bad in [
            bad_version,
            bad_cmd,
            v2_header(1, 0x11, &addr4[..8], &[]),
            v2_header(1, 0x31, &[0; 216], &[]),
            v2_header(1, 0x21, &addr4, &[]),
        ] {
            assert_eq!(parse(&bad), Err(Bad::Malformed), "{bad:?}");
        }
        let mut huge = SIG_V2.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse(&huge), Err(Bad::TooLong));
    }

    proptest! {
        /// Never a panic, and a whole header never claims more bytes than it was given, nor
        /// more than the limits.
        #[test]
        fn any_bytes_parse_without_panic_within_bounds(buf in prop::collection::vec(any::<u8>(), 0..300), v2 in any::<bool>()) {
            let mut b = if v2 { SIG_V2.to_vec() } else { b"PROXY ".to_vec() };
            b.extend_from_slice(&buf);
            for input in [&buf[..], &b[..]] {
                match parse(input) {
                    Ok(Parsed::Done { len, .. }) => prop_assert!(len <= input.len() && len <= MAX_LEN),
                    Ok(Parsed::Need(n)) => prop_assert!(n > input.len() && n <= MAX_LEN),
                    Err(_) => {}
                }
            }
        }

        /// A version 1 header written for any address reads back as that address, with its
        /// length, whatever follows it.
        #[test]
        fn v1_round_trips(a in any::<[u8; 4]>(), port in any::<u16>(), rest in prop::collection::vec(any::<u8>(), 0..20)) {
            let ip = Ipv4Addr::from(a);
            let line = format!("PROXY TCP4 {ip} 10.0.0.1 {port} 443\r\n");
            let mut b = line.clone().into_bytes();
            b.extend_from_slice(&rest);
            prop_assert_eq!(parse(&b), Ok(Parsed::Done { len: line.len(), source: Some(SocketAddr::new(IpAddr::V4(ip), port)) }));
        }
    }
}

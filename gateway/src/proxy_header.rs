//! The PROXY protocol header (HAProxy's v1 text and v2 binary forms) that a load balancer puts
//! before the client's bytes: what a header says (`Header`), parsing it from the bytes read so
//! far, and which peers may send one (`ProxyProtocol`, from `[server] proxy_protocol` and
//! `proxy_trusted`). Pure: `ppp` decodes, this module bounds and types the result; the listener
//! (`server`) reads the bytes.
//!
//! `parse` is monotonic, which is what lets the listener read a header in pieces without ever
//! consuming a client byte: while it answers `Incomplete` every byte seen belongs to the header,
//! and once it answers anything else, more input does not change the answer.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use ppp::{v1, v2, PartialResult};

/// The longest v1 header, CRLF included (the spec's bound).
pub const V1_MAX_LENGTH: usize = 107;
/// The v2 header's fixed part: signature, version and command, family and protocol, length.
const V2_FIXED_LENGTH: usize = 16;
/// TLV bytes accepted after a v2 header's addresses. We use none of them (HAProxy may send a
/// few: ALPN, authority, unique id), and the bound keeps the read short.
pub const V2_MAX_TLVS: usize = 536;
/// The largest v2 address block (two UNIX paths).
const V2_MAX_ADDRESSES: usize = 216;
/// The most bytes a header can take: a v2 header with UNIX addresses and the most TLVs.
pub const MAX_LENGTH: usize = V2_FIXED_LENGTH + V2_MAX_ADDRESSES + V2_MAX_TLVS;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";

/// What a complete header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The balancer relays a client: the addresses of the client's own connection.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// The balancer speaks for itself (v2 LOCAL, as in its health checks; v1 UNKNOWN; v2
    /// UNSPEC): the connection's own peer is the client.
    Local,
}

/// The bytes seen so far, read as the start of a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole header: the first `length` bytes of the input; the rest is the client's.
    Complete { header: Header, length: usize },
    /// Every byte so far belongs to a header that is not finished: read more.
    Incomplete,
}

/// Why bytes are not an acceptable PROXY header. The connection is closed for any of these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("no PROXY header (is the load balancer set to send one: send-proxy or send-proxy-v2?)")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    MalformedV1(String),
    #[error("malformed PROXY v2 header: {0}")]
    MalformedV2(String),
    #[error("PROXY v1 header longer than {V1_MAX_LENGTH} bytes")]
    V1TooLong,
    #[error("PROXY v2 header with {0} bytes of TLVs, more than the {V2_MAX_TLVS} accepted")]
    V2TooLong(usize),
    #[error("PROXY header for {0}, which is not supported (only TCP over IPv4 or IPv6)")]
    Unsupported(&'static str),
}

/// Reads `input`, the first bytes of a connection, as a PROXY header (either version).
/// `Incomplete` only for inputs shorter than `MAX_LENGTH`.
pub fn parse(input: &[u8]) -> Result<Parsed, HeaderError> {
    if begins(input, V2_SIGNATURE) {
        parse_v2(input)
    } else if begins(input, V1_PREFIX) {
        parse_v1(input)
    } else {
        Err(HeaderError::Missing)
    }
}

/// Whether `input` and `prefix` agree as far as both go (an empty input could begin anything).
fn begins(input: &[u8], prefix: &[u8]) -> bool {
    let n = input.len().min(prefix.len());
    input[..n] == prefix[..n]
}

fn parse_v1(input: &[u8]) -> Result<Parsed, HeaderError> {
    // A v1 header is one line: ppp is given only a whole one, as it may call a line refused
    // that more bytes would make valid (`... 54321 ` is an invalid port, `... 54321 25\r\n` is
    // not), and nothing past the first LF, which is the client's.
    let Some(end) = input.iter().position(|&b| b == b'\n') else {
        return match input.len() >= V1_MAX_LENGTH {
            true => Err(HeaderError::V1TooLong),
            false => Ok(Parsed::Incomplete),
        };
    };
    let line = &input[..=end];
    if line.len() > V1_MAX_LENGTH {
        return Err(HeaderError::V1TooLong);
    }
    match v1::Header::try_from(line) {
        Ok(header) if header.header.len() == line.len() => {
            let header = match header.addresses {
                v1::Addresses::Tcp4(a) => Header::Proxied {
                    source: address(a.source_address.into(), a.source_port),
                    destination: address(a.destination_address.into(), a.destination_port),
                },
                v1::Addresses::Tcp6(a) => Header::Proxied {
                    source: address(a.source_address.into(), a.source_port),
                    destination: address(a.destination_address.into(), a.destination_port),
                },
                v1::Addresses::Unknown => Header::Local,
            };
            Ok(Parsed::Complete { header, length: line.len() })
        }
        Ok(_) => Err(HeaderError::MalformedV1("a CR before the end of the line".into())),
        Err(err) => Err(HeaderError::MalformedV1(err.to_string())),
    }
}

fn parse_v2(input: &[u8]) -> Result<Parsed, HeaderError> {
    // Bound the header by what its fixed part declares, before waiting for the rest.
    if let Some(fixed) = input.get(..V2_FIXED_LENGTH) {
        let declared = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
        let addresses = match fixed[13] >> 4 {
            0x1 => 12,
            0x2 => 36,
            0x3 => V2_MAX_ADDRESSES,
            _ => 0,
        };
        let tlvs = declared.saturating_sub(addresses);
        if tlvs > V2_MAX_TLVS {
            return Err(HeaderError::V2TooLong(tlvs));
        }
    }
    let header = match v2::Header::try_from(input) {
        Ok(header) => header,
        Err(err) if err.is_incomplete() => return Ok(Parsed::Incomplete),
        Err(err) => return Err(HeaderError::MalformedV2(err.to_string())),
    };
    let length = header.len();
    if header.command == v2::Command::Local {
        return Ok(Parsed::Complete { header: Header::Local, length });
    }
    let header = match (header.addresses, header.protocol) {
        (v2::Addresses::Unspecified, _) => Header::Local,
        (v2::Addresses::Unix(_), _) => return Err(HeaderError::Unsupported("UNIX sockets")),
        (_, v2::Protocol::Datagram) => return Err(HeaderError::Unsupported("UDP")),
        (v2::Addresses::IPv4(a), _) => Header::Proxied {
            source: address(a.source_address.into(), a.source_port),
            destination: address(a.destination_address.into(), a.destination_port),
        },
        (v2::Addresses::IPv6(a), _) => Header::Proxied {
            source: address(a.source_address.into(), a.source_port),
            destination: address(a.destination_address.into(), a.destination_port),
        },
    };
    Ok(Parsed::Complete { header, length })
}

/// An address from a header; an IPv4-mapped IPv6 one (a balancer listening on `[::]`) as the
/// IPv4 address it is, as the listener's own peers are compared.
fn address(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip.to_canonical(), port)
}

/// Whether connections must begin with a PROXY header, and from whom one is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyProtocol {
    Off,
    /// Every connection begins with a header; only these peers may connect at all.
    Required {
        trusted: Arc<[IpNet]>,
    },
}

impl ProxyProtocol {
    /// From `[server] proxy_protocol` and `proxy_trusted`.
    pub fn new(enabled: bool, trusted: &[IpNet]) -> ProxyProtocol {
        match enabled {
            true => ProxyProtocol::Required { trusted: trusted.into() },
            false => ProxyProtocol::Off,
        }
    }
}

/// Whether `peer` is one of the `trusted` networks (an IPv4-mapped IPv6 peer, as a `[::]`
/// listener sees IPv4 clients, counts as its IPv4 address).
pub fn is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    let peer = peer.to_canonical();
    trusted.iter().any(|network| network.contains(&peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        bytes.extend(u16::try_from(addresses.len() + tlvs.len()).unwrap().to_be_bytes());
        bytes.extend(addresses);
        bytes.extend(tlvs);
        bytes
    }

    const V4_ADDRESSES: [u8; 12] = [192, 0, 2, 7, 10, 0, 0, 1, 0xd4, 0x31, 0, 25];

    fn proxied(source: &str, destination: &str, length: usize) -> Result<Parsed, HeaderError> {
        let header = Header::Proxied { source: source.parse().unwrap(), destination: destination.parse().unwrap() };
        Ok(Parsed::Complete { header, length })
    }

    #[test]
    fn v1_tcp4_and_tcp6_leave_the_client_bytes() {
        let input = b"PROXY TCP4 192.0.2.7 10.0.0.1 54321 25\r\nEHLO x\r\n";
        assert_eq!(parse(input), proxied("192.0.2.7:54321", "10.0.0.1:25", 40));
        let input = b"PROXY TCP6 2001:db8::7 2001:db8::1 54321 25\r\n";
        assert_eq!(parse(input), proxied("[2001:db8::7]:54321", "[2001:db8::1]:25", input.len()));
        let input = b"PROXY TCP6 ::ffff:192.0.2.7 ::ffff:10.0.0.1 54321 25\r\n";
        assert_eq!(parse(input), proxied("192.0.2.7:54321", "10.0.0.1:25", input.len()));
    }

    #[test]
    fn v1_unknown_is_local() {
        let input = b"PROXY UNKNOWN\r\n";
        assert_eq!(parse(input), Ok(Parsed::Complete { header: Header::Local, length: 15 }));
        let input = b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\nQUIT\r\n";
        assert_eq!(parse(input), Ok(Parsed::Complete { header: Header::Local, length: 43 }));
    }

    #[test]
    fn v2_proxy_and_local() {
        let input = [v2(1, 0x11, &V4_ADDRESSES, &[]), b"EHLO x\r\n".to_vec()].concat();
        assert_eq!(parse(&input), proxied("192.0.2.7:54321", "10.0.0.1:25", 28));
        let mut v6 = [0u8; 36];
        v6[15] = 7;
        v6[31] = 1;
        v6[32..].copy_from_slice(&[0xd4, 0x31, 0, 25]);
        assert_eq!(parse(&v2(1, 0x21, &v6, &[])), proxied("[::7]:54321", "[::1]:25", 52));
        // HAProxy's health checks: LOCAL, family UNSPEC, no addresses.
        assert_eq!(parse(&v2(0, 0x00, &[], &[])), Ok(Parsed::Complete { header: Header::Local, length: 16 }));
        // LOCAL may still carry addresses; they are ignored.
        assert_eq!(parse(&v2(0, 0x11, &V4_ADDRESSES, &[])), Ok(Parsed::Complete { header: Header::Local, length: 28 }));
        assert_eq!(parse(&v2(1, 0x00, &[], &[])), Ok(Parsed::Complete { header: Header::Local, length: 16 }));
        // TLVs within the bound are skipped over.
        let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd];
        assert_eq!(parse(&v2(1, 0x11, &V4_ADDRESSES, &tlv)), proxied("192.0.2.7:54321", "10.0.0.1:25", 33));
    }

    #[test]
    fn unsupported_families() {
        assert_eq!(parse(&v2(1, 0x31, &[0; 216], &[])), Err(HeaderError::Unsupported("UNIX sockets")));
        assert_eq!(parse(&v2(1, 0x12, &V4_ADDRESSES, &[])), Err(HeaderError::Unsupported("UDP")));
    }

    #[test]
    fn truncated_headers_are_incomplete() {
        let whole = b"PROXY TCP4 192.0.2.7 10.0.0.1 54321 25\r\n";
        for end in 0..whole.len() {
            assert_eq!(parse(&whole[..end]), Ok(Parsed::Incomplete), "{:?}", &whole[..end]);
        }
        let whole = v2(1, 0x11, &V4_ADDRESSES, &[]);
        for end in 0..whole.len() {
            assert_eq!(parse(&whole[..end]), Ok(Parsed::Incomplete), "{:?}", &whole[..end]);
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(parse(b"EHLO client.test\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXYZ"), Err(HeaderError::Missing));
        assert!(matches!(parse(b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"), Err(HeaderError::MalformedV1(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.400 5.6.7.8 1 2\r\n"), Err(HeaderError::MalformedV1(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n"), Err(HeaderError::MalformedV1(_))));
        // A line that ends without the address fields is refused, not waited on.
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4\r\nEHLO x\r\n"), Err(HeaderError::MalformedV1(_))));
        assert!(matches!(parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"), Err(HeaderError::MalformedV1(_))));
        let mut bad_version = v2(1, 0x11, &V4_ADDRESSES, &[]);
        bad_version[12] = 0x31;
        assert!(matches!(parse(&bad_version), Err(HeaderError::MalformedV2(_))));
        // A declared length too short for the addresses.
        assert!(matches!(parse(&v2(1, 0x11, &V4_ADDRESSES[..8], &[])), Err(HeaderError::MalformedV2(_))));
    }

    #[test]
    fn too_long_is_refused_before_the_rest_arrives() {
        let long = format!("PROXY UNKNOWN {}", "x".repeat(100));
        assert_eq!(parse(long.as_bytes()), Err(HeaderError::V1TooLong));
        let header = v2(1, 0x11, &V4_ADDRESSES, &[0; 600]);
        assert_eq!(parse(&header[..16]), Err(HeaderError::V2TooLong(600)));
        let at_the_bound = v2(1, 0x11, &V4_ADDRESSES, &[0; V2_MAX_TLVS]);
        assert_eq!(parse(&at_the_bound), proxied("192.0.2.7:54321", "10.0.0.1:25", 16 + 12 + V2_MAX_TLVS));
    }

    #[test]
    fn split_across_reads_gives_the_whole_result() {
        let inputs = [
            b"PROXY TCP6 2001:db8::7 2001:db8::1 54321 25\r\nEHLO x\r\n".to_vec(),
            [v2(1, 0x11, &V4_ADDRESSES, &[1, 0, 1, 9]), b"EHLO x\r\n".to_vec()].concat(),
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n".to_vec(),
        ];
        for input in inputs {
            let whole = parse(&input);
            // The reader's view: the first answer that is not Incomplete, as bytes arrive.
            let first = (0..=input.len()).map(|end| parse(&input[..end])).find(|r| *r != Ok(Parsed::Incomplete));
            assert_eq!(first, Some(whole), "{input:?}");
        }
    }

    #[test]
    fn trusted_peers() {
        let trusted: Vec<IpNet> = vec!["127.0.0.2/32".parse().unwrap(), "2001:db8::/32".parse().unwrap()];
        assert!(is_trusted("127.0.0.2".parse().unwrap(), &trusted));
        assert!(!is_trusted("127.0.0.1".parse().unwrap(), &trusted));
        assert!(is_trusted("::ffff:127.0.0.2".parse().unwrap(), &trusted));
        assert!(is_trusted("2001:db8::5".parse().unwrap(), &trusted));
        assert_eq!(ProxyProtocol::new(false, &trusted), ProxyProtocol::Off);
    }
}

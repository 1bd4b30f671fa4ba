//! Validated value types of the policy language: CIDRs, port ranges, protocols, ICMP matches.
//!
//! Each parses from its TOML form in its `Deserialize` impl, so a bad value is reported by the
//! TOML layer with the value's own line and column.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::de::{self, Deserialize, Deserializer};

/// An address prefix, IPv4 or IPv6, with host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    /// The prefix `addr/len`, host bits cleared; `None` when `len` is too long for the family.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                Some(Self { addr: IpAddr::V4((u32::from(a) & mask).into()), len })
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                Some(Self { addr: IpAddr::V6((u128::from(a) & mask).into()), len })
            }
            _ => None,
        }
    }

    /// The prefix of one address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Self {
        Self { addr, len: if addr.is_ipv4() { 32 } else { 128 } }
    }

    /// The network address.
    pub fn addr(self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(self) -> u8 {
        self.len
    }

    /// Whether this is an IPv4 prefix.
    pub fn is_ipv4(self) -> bool {
        self.addr.is_ipv4()
    }

    /// Whether `ip` lies in the prefix (false across families).
    pub fn contains(self, ip: IpAddr) -> bool {
        Cidr::new(ip, self.len).is_some_and(|c| c.addr == self.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    /// `a.b.c.d/len`, `x:y::z/len`, or a bare address (a host prefix). Host bits are cleared.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr =
            addr.parse().map_err(|_| format!("'{s}' is not a CIDR: '{addr}' is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("'{s}' is not a CIDR: prefix length '{l}' is not 0..={max}"))?,
        };
        Cidr::new(addr, len).ok_or_else(|| format!("'{s}' is not a CIDR"))
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(de::Error::custom)
    }
}

/// A TOML value that may be written as a number or a string (ports, protocols).
#[derive(serde::Deserialize)]
#[serde(untagged)]
enum NumberOrText {
    Number(i64),
    Text(String),
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    lo: u16,
    hi: u16,
}

impl PortRange {
    /// `lo..=hi`, or `None` when reversed.
    pub fn new(lo: u16, hi: u16) -> Option<Self> {
        (lo <= hi).then_some(Self { lo, hi })
    }

    /// First port.
    pub fn lo(self) -> u16 {
        self.lo
    }

    /// Last port.
    pub fn hi(self) -> u16 {
        self.hi
    }

    /// Whether `port` is in the range.
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi { write!(f, "{}", self.lo) } else { write!(f, "{}:{}", self.lo, self.hi) }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `"80"` or `"8000:8080"`.
    fn from_str(s: &str) -> Result<Self, String> {
        let port = |p: &str| p.trim().parse::<u16>().map_err(|_| format!("'{p}' is not a port (0..=65535)"));
        match s.split_once(':') {
            None => port(s).map(|p| Self { lo: p, hi: p }),
            Some((lo, hi)) => {
                let (lo, hi) = (port(lo)?, port(hi)?);
                PortRange::new(lo, hi)
                    .ok_or_else(|| format!("port range {lo}:{hi} is reversed (write {hi}:{lo})"))
            }
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => u16::try_from(n)
                .map(|p| Self { lo: p, hi: p })
                .map_err(|_| de::Error::custom(format!("{n} is not a port (0..=65535)"))),
            NumberOrText::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// An IP protocol number; names for the common ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    /// ICMP (1).
    pub const ICMP: Self = Self(1);
    /// TCP (6).
    pub const TCP: Self = Self(6);
    /// UDP (17).
    pub const UDP: Self = Self(17);
    /// ICMPv6 (58).
    pub const ICMPV6: Self = Self(58);
    /// SCTP (132).
    pub const SCTP: Self = Self(132);

    /// Whether rules with this protocol may match ports.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::TCP | Self::UDP | Self::SCTP)
    }

    /// Whether rules with this protocol may match ICMP type and code.
    pub fn is_icmp(self) -> bool {
        matches!(self, Self::ICMP | Self::ICMPV6)
    }
}

impl FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Self::TCP),
            "udp" => Ok(Self::UDP),
            "icmp" => Ok(Self::ICMP),
            "icmpv6" => Ok(Self::ICMPV6),
            "sctp" => Ok(Self::SCTP),
            n => n.parse::<u8>().map(Self).map_err(|_| {
                format!("'{s}' is not a protocol (tcp, udp, icmp, icmpv6, sctp or a number 0..=255)")
            }),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::TCP => write!(f, "tcp"),
            Self::UDP => write!(f, "udp"),
            Self::ICMP => write!(f, "icmp"),
            Self::ICMPV6 => write!(f, "icmpv6"),
            Self::SCTP => write!(f, "sctp"),
            Self(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match NumberOrText::deserialize(d)? {
            NumberOrText::Number(n) => u8::try_from(n)
                .map(Self)
                .map_err(|_| de::Error::custom(format!("{n} is not a protocol number (0..=255)"))),
            NumberOrText::Text(s) => s.parse().map_err(de::Error::custom),
        }
    }
}

/// An ICMP type, optionally with a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    /// ICMP type.
    pub kind: u8,
    /// ICMP code; any when `None`.
    pub code: Option<u8>,
}

impl<'de> Deserialize<'de> for IcmpMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Raw {
            #[serde(rename = "type")]
            kind: Option<u8>,
            code: Option<u8>,
        }
        let raw = Raw::deserialize(d)?;
        match (raw.kind, raw.code) {
            (Some(kind), code) => Ok(Self { kind, code }),
            (None, Some(_)) => {
                Err(de::Error::custom("an ICMP code needs a type: icmp = { type = T, code = C }"))
            }
            (None, None) => Err(de::Error::custom("an ICMP match needs a type: icmp = { type = T }")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_clear_host_bits() {
        let c: Cidr = "198.18.10.11/24".parse().unwrap();
        assert_eq!(c.to_string(), "198.18.10.0/24");
        assert!(c.contains("198.18.10.200".parse().unwrap()));
        assert!(!c.contains("198.18.11.1".parse().unwrap()));
        assert!(!c.contains("2001:db8::1".parse().unwrap()));
        assert_eq!("2001:db8:bad::1/48".parse::<Cidr>().unwrap().to_string(), "2001:db8:bad::/48");
        assert_eq!("198.18.0.53".parse::<Cidr>().unwrap().prefix_len(), 32);
        assert_eq!("::/0".parse::<Cidr>().unwrap().prefix_len(), 0);
        for (bad, want) in [
            ("198.18.0.0/33", "0..=32"),
            ("2001:db8::/129", "0..=128"),
            ("198.18.0/24", "not an IP address"),
            ("198.18.0.0/x", "prefix length"),
            ("", "not an IP address"),
        ] {
            let e = bad.parse::<Cidr>().unwrap_err();
            assert!(e.contains(want), "{bad:?}: {e}");
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!("80".parse::<PortRange>(), Ok(PortRange::new(80, 80).unwrap()));
        assert_eq!("8000:8080".parse::<PortRange>(), Ok(PortRange::new(8000, 8080).unwrap()));
        assert!("9000:80".parse::<PortRange>().unwrap_err().contains("reversed"));
        assert!("70000".parse::<PortRange>().unwrap_err().contains("not a port"));
        assert!("a:b".parse::<PortRange>().is_err());
    }

    #[test]
    fn protocols_parse_by_name_and_number() {
        assert_eq!("TCP".parse::<Protocol>(), Ok(Protocol::TCP));
        assert_eq!("icmpv6".parse::<Protocol>(), Ok(Protocol::ICMPV6));
        assert_eq!("47".parse::<Protocol>(), Ok(Protocol(47)));
        assert!("gre".parse::<Protocol>().unwrap_err().contains("not a protocol"));
        assert!(Protocol::SCTP.has_ports() && !Protocol::ICMP.has_ports() && Protocol::ICMPV6.is_icmp());
    }
}

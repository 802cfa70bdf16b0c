//! Human-friendly units in the config: byte sizes ("50MiB") and durations ("5m").
//!
//! Both parse from strings (and sizes also from plain integers) so operators can write what they
//! mean; the parse errors say which forms are accepted.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// A size in bytes, written as `"64KiB"`, `"50MiB"`, `"1GB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

/// A duration, written as `"500ms"`, `"30s"`, `"5m"`, `"1h"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

const SIZE_HELP: &str = "expected a number with an optional unit B, KB, KiB, MB, MiB, GB or GiB (e.g. \"50MiB\")";
const DURATION_HELP: &str = "expected a number with a unit ms, s, m or h (e.g. \"5m\")";

fn split_number(text: &str) -> Option<(u64, &str)> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    if digits == 0 {
        return None;
    }
    let number = text[..digits].parse().ok()?;
    Some((number, text[digits..].trim()))
}

impl ByteSize {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text).ok_or_else(|| format!("invalid size {text:?}: {SIZE_HELP}"))?;
        let factor: u64 = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1_000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            _ => return Err(format!("invalid size {text:?}: {SIZE_HELP}")),
        };
        number.checked_mul(factor).map(ByteSize).ok_or_else(|| format!("size {text:?} is too large"))
    }
}

impl Span {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (number, unit) = split_number(text).ok_or_else(|| format!("invalid duration {text:?}: {DURATION_HELP}"))?;
        let duration = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            _ => return Err(format!("invalid duration {text:?}: {DURATION_HELP}")),
        };
        Ok(Span(duration))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a size such as \"50MiB\" or a number of bytes")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v).map(ByteSize).map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Span::parse(&text).map_err(de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("50MiB"), Ok(ByteSize(50 << 20)));
        assert_eq!(ByteSize::parse("64 KiB"), Ok(ByteSize(65536)));
        assert_eq!(ByteSize::parse("1MB"), Ok(ByteSize(1_000_000)));
        assert_eq!(ByteSize::parse("512"), Ok(ByteSize(512)));
        assert!(ByteSize::parse("50XB").is_err());
        assert!(ByteSize::parse("MiB").is_err());
        assert!(ByteSize::parse("99999999999999GiB").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(Span::parse("5m"), Ok(Span(Duration::from_secs(300))));
        assert_eq!(Span::parse("250ms"), Ok(Span(Duration::from_millis(250))));
        assert_eq!(Span::parse("2h"), Ok(Span(Duration::from_secs(7200))));
        assert!(Span::parse("5").is_err());
        assert!(Span::parse("5 minutes").is_err());
    }
}

//! Money as integers: [`Micros`] (1 credit = 1 000 000 micro-credits) and exact decimal parsing
//! and formatting at the API edge. No floating point touches an amount anywhere in Tollgate.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Micro-credits per credit.
pub const MICROS_PER_CREDIT: i64 = 1_000_000;

/// An amount of money in micro-credits (1 credit = 1 000 000). Signed, so deltas fit too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Micros(pub i64);

/// Why a decimal amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("expected a decimal number such as 2.5")]
    NotANumber,
    #[error("at most 6 decimal places are allowed")]
    TooPrecise,
    #[error("amount is too large")]
    TooLarge,
    #[error("amount must not be negative")]
    Negative,
}

impl Micros {
    pub const ZERO: Micros = Micros(0);

    /// Parses a decimal literal (`"2.5"`, `"-12"`, `"0.000001"`) exactly, without floats.
    pub fn parse_decimal(text: &str) -> Result<Micros, AmountError> {
        let text = text.trim();
        let (negative, digits) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text.strip_prefix('+').unwrap_or(text)),
        };
        let (whole, frac) = match digits.split_once('.') {
            Some((w, f)) => (w, f),
            None => (digits, ""),
        };
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !all_digits(whole) || !all_digits(frac) {
            return Err(AmountError::NotANumber);
        }
        if digits.ends_with('.') && frac.is_empty() && whole.is_empty() {
            return Err(AmountError::NotANumber);
        }
        let frac = frac.trim_end_matches('0');
        if frac.len() > 6 {
            return Err(AmountError::TooPrecise);
        }
        let whole_value: i64 = if whole.is_empty() {
            0
        } else {
            whole
                .trim_start_matches('0')
                .parse::<i64>()
                .or_else(|e| {
                    if whole.trim_start_matches('0').is_empty() {
                        Ok(0)
                    } else {
                        Err(e)
                    }
                })
                .map_err(|_| AmountError::TooLarge)?
        };
        let mut frac_value: i64 = 0;
        for (i, b) in frac.bytes().enumerate() {
            frac_value += i64::from(b - b'0') * 10_i64.pow(5 - i as u32);
        }
        // In i128, so that the most negative amount (whose magnitude i64 cannot hold) parses too.
        let magnitude =
            i128::from(whole_value) * i128::from(MICROS_PER_CREDIT) + i128::from(frac_value);
        let value = if negative { -magnitude } else { magnitude };
        i64::try_from(value)
            .map(Micros)
            .map_err(|_| AmountError::TooLarge)
    }

    /// Parses a JSON number or numeric string exactly from its raw JSON text.
    pub fn from_json_text(raw: &str) -> Result<Micros, AmountError> {
        let raw = raw.trim();
        let inner = raw
            .strip_prefix('"')
            .and_then(|r| r.strip_suffix('"'))
            .unwrap_or(raw);
        match inner.find(['e', 'E']) {
            Some(at) => Micros::parse_decimal(&expand_exponent(&inner[..at], &inner[at + 1..])?),
            None => Micros::parse_decimal(inner),
        }
    }

    /// The amount as a decimal string with no trailing zeros (`2500000` → `"2.5"`).
    pub fn to_decimal_string(self) -> String {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let whole = abs / MICROS_PER_CREDIT as u64;
        let frac = abs % MICROS_PER_CREDIT as u64;
        if frac == 0 {
            format!("{sign}{whole}")
        } else {
            let frac = format!("{frac:06}");
            format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
        }
    }
}

/// Rewrites `mantissa × 10^exponent` (as JSON writes `1e-6`) as a plain decimal string, exactly.
fn expand_exponent(mantissa: &str, exponent: &str) -> Result<String, AmountError> {
    let exponent: i64 = exponent.parse().map_err(|_| AmountError::NotANumber)?;
    if exponent.abs() > 40 {
        return Err(if exponent > 0 {
            AmountError::TooLarge
        } else {
            AmountError::TooPrecise
        });
    }
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (whole, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (whole.is_empty() && frac.is_empty())
        || !(whole.bytes().chain(frac.bytes())).all(|b| b.is_ascii_digit())
    {
        return Err(AmountError::NotANumber);
    }
    let digits = format!("{whole}{frac}");
    let point = whole.len() as i64 + exponent;
    Ok(if point <= 0 {
        format!(
            "{sign}0.{}{digits}",
            "0".repeat(point.unsigned_abs() as usize)
        )
    } else if point as usize >= digits.len() {
        format!(
            "{sign}{digits}{}",
            "0".repeat(point as usize - digits.len())
        )
    } else {
        format!(
            "{sign}{}.{}",
            &digits[..point as usize],
            &digits[point as usize..]
        )
    })
}

impl fmt::Display for Micros {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_decimal_string())
    }
}

/// Serializes as an exact JSON number in credits (`2.5`), written from the integer.
impl Serialize for Micros {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_decimal_string())
            .map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

/// Deserializes a credits amount from a JSON number or string without going through `f64`.
impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<serde_json::value::RawValue>::deserialize(deserializer)?;
        Micros::from_json_text(raw.get())
            .map_err(|e| serde::de::Error::custom(format!("{e} (got {})", raw.get())))
    }
}

/// A non-negative credits amount (prices, starting balances).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NonNegativeMicros(pub Micros);

impl<'de> Deserialize<'de> for NonNegativeMicros {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let m = Micros::deserialize(deserializer)?;
        if m.0 < 0 {
            return Err(serde::de::Error::custom(AmountError::Negative));
        }
        Ok(NonNegativeMicros(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_decimals_exactly() {
        assert_eq!(Micros::parse_decimal("2.5"), Ok(Micros(2_500_000)));
        assert_eq!(Micros::parse_decimal("0.000001"), Ok(Micros(1)));
        assert_eq!(Micros::parse_decimal("-12.75"), Ok(Micros(-12_750_000)));
        assert_eq!(Micros::parse_decimal("100"), Ok(Micros(100_000_000)));
        assert_eq!(Micros::parse_decimal("0"), Ok(Micros(0)));
        assert_eq!(Micros::parse_decimal(".5"), Ok(Micros(500_000)));
        assert_eq!(Micros::parse_decimal("1.2300000"), Ok(Micros(1_230_000)));
        assert_eq!(
            Micros::parse_decimal("0.1234567"),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(Micros::parse_decimal("abc"), Err(AmountError::NotANumber));
        assert_eq!(Micros::parse_decimal(""), Err(AmountError::NotANumber));
        assert_eq!(Micros::parse_decimal("."), Err(AmountError::NotANumber));
        assert_eq!(
            Micros::parse_decimal("99999999999999999"),
            Err(AmountError::TooLarge)
        );
        assert_eq!(Micros::from_json_text("1e3"), Ok(Micros(1_000_000_000)));
        assert_eq!(Micros::from_json_text("1e-6"), Ok(Micros(1)));
        assert_eq!(Micros::from_json_text("1e-06"), Ok(Micros(1)));
        assert_eq!(Micros::from_json_text("2.5E-1"), Ok(Micros(250_000)));
        assert_eq!(Micros::from_json_text("-1.5e2"), Ok(Micros(-150_000_000)));
        assert_eq!(Micros::from_json_text("1e-7"), Err(AmountError::TooPrecise));
        assert_eq!(Micros::from_json_text("1e"), Err(AmountError::NotANumber));
        assert_eq!(Micros::from_json_text("\"0.1\""), Ok(Micros(100_000)));
    }

    #[test]
    fn formats_without_trailing_zeros() {
        assert_eq!(Micros(2_500_000).to_decimal_string(), "2.5");
        assert_eq!(Micros(1).to_decimal_string(), "0.000001");
        assert_eq!(Micros(-1_230_000).to_decimal_string(), "-1.23");
        assert_eq!(Micros(0).to_decimal_string(), "0");
        assert_eq!(
            serde_json::to_string(&Micros(112_500_000)).ok().as_deref(),
            Some("112.5")
        );
    }
}

//! Money: integer minor units end to end, decimal strings on the wire.
//!
//! There is no floating point anywhere in this module or its callers. An
//! amount is an `i64` count of the currency's minor unit (cents for USD); it
//! is parsed from and printed as a decimal string with exactly the
//! currency's number of minor-unit digits (`"125.50"`, `"980"` for JPY).

use std::fmt;

/// An ISO 4217 currency this service knows the minor unit of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    exponent: u8,
}

/// ISO 4217 codes and their minor-unit exponents. A currency not listed
/// here is refused, because its minor unit would be a guess.
const CURRENCIES: &[(&str, u8)] = &[
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CNY", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("INR", 2),
    ("JPY", 0),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("USD", 2),
    ("ZAR", 2),
];

/// Why a currency code was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    #[error("currency must be a three-letter ISO 4217 code in upper case, e.g. \"USD\"")]
    /// Not three upper-case letters.
    Malformed,
    #[error("currency is not one this service supports")]
    /// A code this service does not handle.
    Unsupported,
}

impl Currency {
    /// Parses an ISO 4217 code this service supports.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let bytes = code.as_bytes();
        if bytes.len() != 3 || !bytes.iter().all(u8::is_ascii_uppercase) {
            return Err(CurrencyError::Malformed);
        }
        CURRENCIES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|(_, exponent)| Self {
                code: [bytes[0], bytes[1], bytes[2]],
                exponent: *exponent,
            })
            .ok_or(CurrencyError::Unsupported)
    }

    /// The ISO 4217 code.
    pub fn code(&self) -> &str {
        // The bytes were checked to be ASCII upper-case letters.
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }

    /// Digits after the decimal point (2 for USD, 0 for JPY).
    pub(crate) fn exponent(&self) -> u8 {
        self.exponent
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// Why an amount string was refused. `Malformed` is a 400 (not a decimal
/// number); the others are well-formed but unacceptable (422).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AmountError {
    #[error(
        "must be a decimal string such as \"125.50\" (digits, an optional point and fraction; no sign, exponent, spaces or separators)"
    )]
    Malformed,
    #[error("must not be negative")]
    Negative,
    #[error("has more decimal places than the currency allows")]
    TooPrecise,
    #[error("is too large")]
    TooLarge,
}

impl AmountError {
    /// True for input that is well-formed but not acceptable (HTTP 422).
    pub(crate) fn is_unprocessable(self) -> bool {
        !matches!(self, Self::Malformed)
    }
}

/// Parses a non-negative decimal string into minor units of `currency`.
///
/// Grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?`. A leading `-` parses (so that a
/// negative amount is reported as such, 422) but is never accepted. Fewer
/// fraction digits than the currency's are padded (`"125.5"` USD is 12550);
/// more are refused even when they are zeros, so that what a client sent is
/// exactly what is stored.
pub(crate) fn parse_amount(text: &str, currency: Currency) -> Result<i64, AmountError> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match body.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (body, None),
    };
    let int_ok = !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'));
    let frac_ok = frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()));
    if !int_ok || !frac_ok {
        return Err(AmountError::Malformed);
    }
    if negative {
        // Also "-0": balances carry no sign.
        return Err(AmountError::Negative);
    }
    let exponent = usize::from(currency.exponent());
    let frac = frac.unwrap_or("");
    if frac.len() > exponent {
        return Err(AmountError::TooPrecise);
    }
    let mut minor: i64 = 0;
    for b in int
        .bytes()
        .chain(frac.bytes())
        .chain(std::iter::repeat_n(b'0', exponent - frac.len()))
    {
        minor = minor
            .checked_mul(10)
            .and_then(|m| m.checked_add(i64::from(b - b'0')))
            .ok_or(AmountError::TooLarge)?;
    }
    Ok(minor)
}

/// Formats minor units with exactly the currency's minor-unit digits.
pub fn format_amount(minor: i64, currency: Currency) -> String {
    let exponent = u32::from(currency.exponent());
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    if exponent == 0 {
        return format!("{sign}{abs}");
    }
    let scale = 10u64.pow(exponent);
    format!(
        "{sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = exponent as usize
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    #[test]
    fn currencies() {
        assert_eq!(Currency::parse("USD").unwrap().exponent(), 2);
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        assert_eq!(Currency::parse("usd"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("US"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("USDX"), Err(CurrencyError::Malformed));
        assert_eq!(Currency::parse("XYZ"), Err(CurrencyError::Unsupported));
        assert_eq!(Currency::parse("ÜSD"), Err(CurrencyError::Malformed));
    }

    #[test]
    fn parses_exact_decimal_strings() {
        assert_eq!(parse_amount("125.50", usd()), Ok(12550));
        assert_eq!(parse_amount("125.5", usd()), Ok(12550));
        assert_eq!(parse_amount("125", usd()), Ok(12500));
        assert_eq!(parse_amount("0", usd()), Ok(0));
        assert_eq!(parse_amount("0.01", usd()), Ok(1));
        assert_eq!(
            parse_amount("980", Currency::parse("JPY").unwrap()),
            Ok(980)
        );
        assert_eq!(
            parse_amount("1.234", Currency::parse("KWD").unwrap()),
            Ok(1234)
        );
        assert_eq!(parse_amount("92233720368547758.07", usd()), Ok(i64::MAX));
    }

    #[test]
    fn refuses_what_is_not_plainly_a_decimal() {
        for bad in [
            "", " 1", "1 ", "+1", "1e400", "1E2", "1,50", "1.", ".5", "01", "00.5", "1..2", "0x10",
            "NaN", "inf", "١٢", "1.5.0", "--1", "- 1",
        ] {
            assert_eq!(
                parse_amount(bad, usd()),
                Err(AmountError::Malformed),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn refuses_well_formed_but_unacceptable_amounts() {
        assert_eq!(parse_amount("-5.00", usd()), Err(AmountError::Negative));
        assert_eq!(parse_amount("-0", usd()), Err(AmountError::Negative));
        assert_eq!(parse_amount("1.005", usd()), Err(AmountError::TooPrecise));
        assert_eq!(parse_amount("1.000", usd()), Err(AmountError::TooPrecise));
        assert_eq!(
            parse_amount("1.5", Currency::parse("JPY").unwrap()),
            Err(AmountError::TooPrecise)
        );
        assert_eq!(
            parse_amount("92233720368547758.08", usd()),
            Err(AmountError::TooLarge)
        );
        assert_eq!(
            parse_amount(&"9".repeat(400), usd()),
            Err(AmountError::TooLarge)
        );
        assert!(AmountError::Negative.is_unprocessable());
        assert!(!AmountError::Malformed.is_unprocessable());
    }

    proptest::proptest! {
        /// Any text and any code: no panic; what parses formats back to
        /// itself.
        #[test]
        fn amounts_round_trip(text in "-?[0-9]{0,22}(\\.[0-9]{0,4})?|\\PC{0,40}", code in "[A-Z]{3}|[a-z]{3}|\\PC{0,5}") {
            if let Ok(currency) = Currency::parse(&code)
                && let Ok(minor) = parse_amount(&text, currency)
            {
                proptest::prop_assert!(minor >= 0);
                proptest::prop_assert_eq!(parse_amount(&format_amount(minor, currency), currency), Ok(minor));
            }
        }

        /// Every supported currency, and amounts written with at most its
        /// minor-unit digits: they parse (this is not left to chance), to
        /// the value the digits say, and format back to themselves.
        #[test]
        fn valid_amounts_in_every_supported_currency(
            index in 0..CURRENCIES.len(),
            whole in 0u64..=9_999_999_999_999,
            fraction in 0u64..1000,
            digits in 0u8..=3,
        ) {
            let (code, exponent) = CURRENCIES[index];
            let currency = Currency::parse(code);
            proptest::prop_assert!(currency.is_ok(), "{} is supported", code);
            let currency = currency.unwrap_or_else(|_| unreachable!());
            let digits = digits.min(exponent);
            let fraction = fraction % 10u64.pow(u32::from(digits));
            let text = if digits == 0 {
                whole.to_string()
            } else {
                format!("{whole}.{fraction:0width$}", width = usize::from(digits))
            };
            let expected = i64::try_from(
                whole * 10u64.pow(u32::from(exponent))
                    + fraction * 10u64.pow(u32::from(exponent - digits)),
            ).unwrap_or(i64::MAX);
            let minor = parse_amount(&text, currency);
            proptest::prop_assert_eq!(minor, Ok(expected), "{} {}", text, code);
            proptest::prop_assert_eq!(parse_amount(&format_amount(expected, currency), currency), Ok(expected));
        }

        #[test]
        fn every_minor_amount_formats_and_parses(minor in 0i64..=i64::MAX) {
            for code in ["USD", "JPY", "KWD"] {
                let c = Currency::parse(code).unwrap();
                proptest::prop_assert_eq!(parse_amount(&format_amount(minor, c), c), Ok(minor));
            }
        }
    }

    #[test]
    fn formats_with_exactly_the_minor_unit_digits() {
        assert_eq!(format_amount(12550, usd()), "125.50");
        assert_eq!(format_amount(5, usd()), "0.05");
        assert_eq!(format_amount(0, usd()), "0.00");
        assert_eq!(format_amount(980, Currency::parse("JPY").unwrap()), "980");
        assert_eq!(
            format_amount(1234, Currency::parse("KWD").unwrap()),
            "1.234"
        );
        assert_eq!(format_amount(i64::MAX, usd()), "92233720368547758.07");
        for minor in [0, 1, 99, 100, 12550, 999_999_999] {
            assert_eq!(parse_amount(&format_amount(minor, usd()), usd()), Ok(minor));
        }
    }
}

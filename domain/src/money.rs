//! Money: integer minor units of one currency, bounded to what a payment provider accepts,
//! with checked arithmetic so a price or a total can never wrap around.

use serde::{Deserialize, Serialize};

use crate::values::Currency;

/// The largest amount, in minor units, of a ticket, a bundle or an order: Stripe's limit
/// for an eight-digit amount (999,999.99 in a two-decimal currency). A total beyond it is
/// refused rather than charged in parts.
pub const MAX_AMOUNT_MINOR: i64 = 99_999_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MoneyError {
    #[error("an amount must be between 0 and 99999999 minor units")]
    OutOfRange,
    #[error("amounts in different currencies do not add up")]
    CurrencyMismatch,
}

/// An amount of one currency, always within `0..=MAX_AMOUNT_MINOR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMoney", into = "RawMoney")]
pub struct Money {
    minor: i64,
    currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Result<Self, MoneyError> {
        if (0..=MAX_AMOUNT_MINOR).contains(&minor) {
            Ok(Self { minor, currency })
        } else {
            Err(MoneyError::OutOfRange)
        }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn minor(self) -> i64 {
        self.minor
    }

    pub fn currency(self) -> Currency {
        self.currency
    }

    pub fn checked_add(self, other: Self) -> Result<Self, MoneyError> {
        if self.currency != other.currency {
            return Err(MoneyError::CurrencyMismatch);
        }
        let sum = self
            .minor
            .checked_add(other.minor)
            .ok_or(MoneyError::OutOfRange)?;
        Self::new(sum, self.currency)
    }

    pub fn checked_mul(self, times: u32) -> Result<Self, MoneyError> {
        let product = self
            .minor
            .checked_mul(i64::from(times))
            .ok_or(MoneyError::OutOfRange)?;
        Self::new(product, self.currency)
    }
}

#[derive(Serialize, Deserialize)]
struct RawMoney {
    amount_minor: i64,
    currency: Currency,
}

impl TryFrom<RawMoney> for Money {
    type Error = MoneyError;
    fn try_from(raw: RawMoney) -> Result<Self, Self::Error> {
        Self::new(raw.amount_minor, raw.currency)
    }
}

impl From<Money> for RawMoney {
    fn from(money: Money) -> Self {
        Self {
            amount_minor: money.minor,
            currency: money.currency,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor: i64) -> Result<Money, MoneyError> {
        Money::new(minor, Currency::parse("USD").unwrap())
    }

    #[test]
    fn amounts_outside_the_provider_range_are_refused() {
        assert!(usd(-1).is_err());
        assert!(usd(MAX_AMOUNT_MINOR + 1).is_err());
        assert!(usd(i64::MAX).is_err());
        assert_eq!(usd(MAX_AMOUNT_MINOR).unwrap().minor(), MAX_AMOUNT_MINOR);
    }

    #[test]
    fn arithmetic_is_checked_not_wrapping() {
        let max = usd(MAX_AMOUNT_MINOR).unwrap();
        assert_eq!(max.checked_mul(2), Err(MoneyError::OutOfRange));
        assert_eq!(
            max.checked_add(usd(1).unwrap()),
            Err(MoneyError::OutOfRange)
        );
        assert_eq!(usd(500).unwrap().checked_mul(3).unwrap().minor(), 1500);
        let eur = Money::new(1, Currency::parse("EUR").unwrap()).unwrap();
        assert_eq!(
            usd(1).unwrap().checked_add(eur),
            Err(MoneyError::CurrencyMismatch)
        );
    }
}

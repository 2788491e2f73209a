//! A raffle's fixed terms: numbering, price and bundles, limits, prizes, draw commitment.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::commands::CreateRaffle;
use crate::errors::RaffleError;
use crate::money::{Money, MAX_AMOUNT_MINOR};
use crate::text::{parse_text, TextKind};
use crate::values::{Currency, PlusAddressing};

pub const MAX_TICKET_COUNT: u32 = 10_000_000;
/// Bounds the bundle-pricing search (O(quantity × bundles)) and the size of one event.
pub const MAX_TICKETS_PER_ORDER_CAP: u32 = 100_000;
pub const DEFAULT_HOLD_SECONDS: u32 = 15 * 60;
pub const DEFAULT_MAX_HOLD_SECONDS: u32 = 72 * 3600;
const MAX_BUNDLES: usize = 16;
const MAX_PRIZES: usize = 1_000;

/// "`quantity` tickets for `price_minor`", e.g. 5 for 40.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bundle {
    pub quantity: u32,
    pub price_minor: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prize {
    pub name: String,
    /// Early-bird prize: only tickets issued strictly before this instant take part.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_bird_cutoff: Option<DateTime<Utc>>,
}

/// What happens to a payment that arrives after its hold expired and its numbers were taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LatePaymentPolicy {
    /// Issue the same quantity of random free numbers instead.
    Substitute,
    /// Record that the payment must be refunded.
    #[default]
    Refund,
}

impl LatePaymentPolicy {
    /// The stable name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Substitute => "substitute",
            Self::Refund => "refund",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaffleConfig {
    pub raffle_id: Uuid,
    pub title: String,
    pub organizer_id: String,
    pub ticket_count: u32,
    pub first_number: u32,
    pub number_width: u8,
    pub price_minor: i64,
    pub currency: Currency,
    #[serde(default)]
    pub bundles: Vec<Bundle>,
    pub hold_seconds: u32,
    pub max_hold_seconds: u32,
    pub max_tickets_per_order: u32,
    #[serde(default)]
    pub max_tickets_per_buyer: Option<u32>,
    #[serde(default)]
    pub prizes: Vec<Prize>,
    pub draw_commitment: String,
    #[serde(default)]
    pub late_payment_policy: LatePaymentPolicy,
    /// Whether plus-addresses count as one buyer for `max_tickets_per_buyer`.
    #[serde(default)]
    pub plus_addressing: PlusAddressing,
    /// IANA name of the time zone exports show times in (`None`: UTC). Only its shape is
    /// checked here; the API checks that the zone exists (the domain has no zone database).
    /// Absent from events written before it existed, and from those that leave it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// The shape of an IANA zone name (`Area/Location`, `UTC`, `Etc/GMT+5`): ASCII letters,
/// digits and `/_+-`, no empty or dot segments. Whether the zone exists is the edge's check.
pub fn is_time_zone_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b))
        && name.split('/').all(|segment| !segment.is_empty())
        && name.as_bytes()[0].is_ascii_alphabetic()
}

impl RaffleConfig {
    pub(crate) fn parse(cmd: CreateRaffle) -> Result<Self, RaffleError> {
        let invalid = |field: &'static str, reason: &'static str| {
            Err(RaffleError::InvalidRaffle {
                field: field.into(),
                reason: reason.into(),
            })
        };
        let text = |field, raw: &str, max| {
            parse_text(field, raw, TextKind::Name, max).map_err(|e| RaffleError::InvalidRaffle {
                field: e.field.into(),
                reason: e.reason,
            })
        };
        let title = text("title", &cmd.title, 200)?;
        let organizer_id = text("organizer_id", &cmd.organizer_id, 100)?;
        for prize in &cmd.prizes {
            text("prizes", &prize.name, 200)?;
        }
        if !(1..=MAX_TICKET_COUNT).contains(&cmd.ticket_count) {
            return invalid("ticket_count", "must be between 1 and 10000000");
        }
        if cmd.first_number > 1 {
            return invalid("first_number", "must be 0 or 1");
        }
        let last = cmd.first_number + cmd.ticket_count - 1;
        let needed_width = last.to_string().len() as u8;
        let number_width = cmd.number_width.unwrap_or(needed_width);
        if number_width < needed_width || number_width > 10 {
            return invalid(
                "number_width",
                "must fit the largest number and be at most 10",
            );
        }
        if !(1..=MAX_AMOUNT_MINOR).contains(&cmd.price_minor) {
            return invalid("price_minor", "must be between 1 and 99999999");
        }
        if cmd.bundles.len() > MAX_BUNDLES {
            return invalid("bundles", "at most 16 bundles");
        }
        if cmd
            .bundles
            .iter()
            .any(|b| b.quantity < 2 || !(1..=MAX_AMOUNT_MINOR).contains(&b.price_minor))
        {
            return invalid(
                "bundles",
                "each bundle needs a quantity of 2 or more and a price between 1 and 99999999",
            );
        }
        let hold_seconds = cmd.hold_seconds.unwrap_or(DEFAULT_HOLD_SECONDS);
        if !(60..=7 * 24 * 3600).contains(&hold_seconds) {
            return invalid("hold_minutes", "must be between 1 minute and 7 days");
        }
        let max_hold_seconds = cmd
            .max_hold_seconds
            .unwrap_or(DEFAULT_MAX_HOLD_SECONDS.max(hold_seconds));
        if max_hold_seconds < hold_seconds || max_hold_seconds > 30 * 24 * 3600 {
            return invalid(
                "max_hold_minutes",
                "must be at least the hold and at most 30 days",
            );
        }
        if !(1..=MAX_TICKETS_PER_ORDER_CAP).contains(&cmd.max_tickets_per_order) {
            return invalid("max_tickets_per_order", "must be between 1 and 100000");
        }
        if cmd.max_tickets_per_buyer == Some(0) {
            return invalid("max_tickets_per_buyer", "must be positive when given");
        }
        if cmd.prizes.len() > MAX_PRIZES {
            return invalid("prizes", "at most 1000 prizes, each with a name");
        }
        let time_zone = cmd.time_zone.as_deref().map(str::trim);
        if time_zone.is_some_and(|zone| !is_time_zone_name(zone)) {
            return invalid(
                "time_zone",
                "must be an IANA time zone name such as America/Mexico_City",
            );
        }
        let time_zone = time_zone.map(str::to_owned);
        let commitment = cmd.draw_commitment.trim().to_ascii_lowercase();
        if commitment.len() != 64 || !commitment.bytes().all(|b| b.is_ascii_hexdigit()) {
            return invalid(
                "draw_commitment",
                "must be the hex SHA-256 of the draw seed",
            );
        }
        Ok(Self {
            raffle_id: cmd.raffle_id,
            title,
            organizer_id,
            ticket_count: cmd.ticket_count,
            first_number: cmd.first_number,
            number_width,
            price_minor: cmd.price_minor,
            currency: cmd.currency,
            bundles: cmd.bundles,
            hold_seconds,
            max_hold_seconds,
            max_tickets_per_order: cmd.max_tickets_per_order,
            max_tickets_per_buyer: cmd.max_tickets_per_buyer,
            prizes: cmd
                .prizes
                .into_iter()
                .map(|p| Prize {
                    name: p.name.trim().to_owned(),
                    ..p
                })
                .collect(),
            draw_commitment: commitment,
            late_payment_policy: cmd.late_payment_policy,
            plus_addressing: cmd.plus_addressing,
            time_zone,
        })
    }

    /// The IANA name of the zone times are shown in.
    pub fn time_zone(&self) -> &str {
        self.time_zone.as_deref().unwrap_or("UTC")
    }

    pub fn last_number(&self) -> u32 {
        self.first_number + self.ticket_count - 1
    }

    pub fn contains_number(&self, number: u32) -> bool {
        (self.first_number..=self.last_number()).contains(&number)
    }

    /// Zero-padded display form, e.g. `0042` for width 4.
    pub fn display_number(&self, number: u32) -> String {
        format!("{number:0width$}", width = usize::from(self.number_width))
    }

    /// The cheapest way to pay for exactly `quantity` tickets with single tickets and bundles
    /// (unbounded knapsack; quantity is capped by `MAX_TICKETS_PER_ORDER_CAP`). A total beyond
    /// [`MAX_AMOUNT_MINOR`] is refused, never wrapped.
    pub fn price_for(&self, quantity: u32) -> Result<Money, RaffleError> {
        let too_large = |_| RaffleError::AmountTooLarge {
            limit: MAX_AMOUNT_MINOR,
        };
        let price = Money::new(self.price_minor, self.currency).map_err(too_large)?;
        if self.bundles.is_empty() {
            return price.checked_mul(quantity).map_err(too_large);
        }
        let bundles = self
            .bundles
            .iter()
            .map(|b| {
                Ok((
                    b.quantity as usize,
                    Money::new(b.price_minor, self.currency)?,
                ))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(too_large)?;
        // `None`: no way to pay for that many tickets within the limit.
        let quantity = quantity as usize;
        let mut best = vec![Some(Money::zero(self.currency)); quantity + 1];
        for q in 1..=quantity {
            let single = best[q - 1].and_then(|b| b.checked_add(price).ok());
            best[q] = bundles
                .iter()
                .filter(|(size, _)| *size <= q)
                .filter_map(|(size, cost)| best[q - size]?.checked_add(*cost).ok())
                .chain(single)
                .min_by_key(|m| m.minor());
        }
        best[quantity].ok_or(RaffleError::AmountTooLarge {
            limit: MAX_AMOUNT_MINOR,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(bundles: Vec<Bundle>) -> RaffleConfig {
        let mut cmd = CreateRaffle::example(Uuid::nil(), 100);
        cmd.price_minor = 10;
        cmd.bundles = bundles;
        RaffleConfig::parse(cmd).unwrap()
    }

    fn price(cfg: &RaffleConfig, quantity: u32) -> i64 {
        cfg.price_for(quantity).unwrap().minor()
    }

    #[test]
    fn prices_beyond_the_provider_limit_are_refused_not_wrapped() {
        let mut cmd = CreateRaffle::example(Uuid::nil(), 100);
        cmd.price_minor = i64::MAX;
        assert!(matches!(
            RaffleConfig::parse(cmd.clone()),
            Err(RaffleError::InvalidRaffle { field, .. }) if field == "price_minor"
        ));
        cmd.price_minor = 10;
        cmd.bundles = vec![Bundle {
            quantity: 3,
            price_minor: i64::MAX,
        }];
        assert!(RaffleConfig::parse(cmd.clone()).is_err());
        cmd.bundles.clear();
        cmd.price_minor = MAX_AMOUNT_MINOR;
        let cfg = RaffleConfig::parse(cmd).unwrap();
        assert_eq!(price(&cfg, 1), MAX_AMOUNT_MINOR);
        assert_eq!(
            cfg.price_for(2),
            Err(RaffleError::AmountTooLarge {
                limit: MAX_AMOUNT_MINOR
            })
        );
    }

    #[test]
    fn bundles_pick_the_cheapest_combination() {
        let cfg = config(vec![
            Bundle {
                quantity: 5,
                price_minor: 40,
            },
            Bundle {
                quantity: 20,
                price_minor: 100,
            },
        ]);
        assert_eq!(price(&cfg, 1), 10);
        assert_eq!(price(&cfg, 5), 40);
        assert_eq!(price(&cfg, 7), 60);
        assert_eq!(price(&cfg, 20), 100);
        assert_eq!(price(&cfg, 19), 3 * 40 + 4 * 10);
        assert_eq!(price(&cfg, 45), 100 + 100 + 40);
    }

    #[test]
    fn a_bundle_dearer_than_singles_is_never_chosen() {
        let cfg = config(vec![Bundle {
            quantity: 3,
            price_minor: 50,
        }]);
        assert_eq!(price(&cfg, 3), 30);
    }

    #[test]
    fn status_and_policy_names_are_their_json_names() {
        use crate::{OrderStatus, RaffleStatus};
        let json = |v: serde_json::Value| v.as_str().unwrap().to_owned();
        for s in [
            RaffleStatus::Draft,
            RaffleStatus::OnSale,
            RaffleStatus::Closed,
            RaffleStatus::Drawn,
            RaffleStatus::Cancelled,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for s in [
            OrderStatus::Reserved,
            OrderStatus::Paid,
            OrderStatus::Released,
            OrderStatus::Expired,
            OrderStatus::Refunded,
            OrderStatus::RefundRequired,
        ] {
            assert_eq!(s.as_str(), json(serde_json::to_value(s).unwrap()));
        }
        for p in [LatePaymentPolicy::Refund, LatePaymentPolicy::Substitute] {
            assert_eq!(p.as_str(), json(serde_json::to_value(p).unwrap()));
        }
    }

    #[test]
    fn time_zone_names_are_checked_for_shape_only() {
        for good in [
            "UTC",
            "America/Mexico_City",
            "Etc/GMT+5",
            "America/Port-au-Prince",
        ] {
            assert!(is_time_zone_name(good), "{good}");
        }
        for bad in [
            "",
            "/UTC",
            "America//X",
            "Europe/../etc",
            "UTC'; DROP",
            "9Z",
            "Zone\n",
        ] {
            assert!(!is_time_zone_name(bad), "{bad}");
        }
        let mut cmd = CreateRaffle::example(Uuid::nil(), 10);
        cmd.time_zone = Some("Mars/Olympus Mons".into());
        assert!(RaffleConfig::parse(cmd).is_err());
    }

    #[test]
    fn number_width_defaults_to_the_largest_number() {
        let cfg = RaffleConfig::parse(CreateRaffle::example(Uuid::nil(), 1000)).unwrap();
        assert_eq!(cfg.number_width, 4);
        assert_eq!(cfg.display_number(7), "0007");
    }
}

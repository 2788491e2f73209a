//! What is limited, and how much: a limit per scope (API key, client IP) and route class,
//! from `TOMBOLA_RATE_LIMIT_PER_KEY` / `_PER_IP` (every class) and the overrides of
//! `TOMBOLA_RATE_LIMITS` (`reserve.key=20/s,checkout.ip=300/min:60,webhooks.ip=off`).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

/// Who a limit counts: the authenticated API key, or the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Key,
    Ip,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Ip => "ip",
        }
    }
}

/// Routes that share a budget. A client's reservations, its payments and its reads each have
/// their own, so that a burst of reads cannot starve checkout, and webhooks have theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// `POST /v1/raffles/{id}/reservations`.
    Reserve,
    /// Paying for and refunding an order (manual payments, refunds).
    Checkout,
    /// Everything else.
    General,
    /// Payment providers' deliveries (`/v1/webhooks/…`).
    Webhooks,
}

impl RouteClass {
    pub const ALL: [Self; 4] = [Self::Reserve, Self::Checkout, Self::General, Self::Webhooks];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Reserve => "reserve",
            Self::Checkout => "checkout",
            Self::General => "general",
            Self::Webhooks => "webhooks",
        }
    }

    /// The class of a request, from its method and route template (axum's `MatchedPath`).
    pub fn of(method: &axum::http::Method, route: Option<&str>) -> Self {
        let Some(route) = route else {
            return Self::General;
        };
        if route.starts_with("/v1/webhooks/") {
            Self::Webhooks
        } else if method == axum::http::Method::POST && route == "/v1/raffles/{id}/reservations" {
            Self::Reserve
        } else if method == axum::http::Method::POST
            && (route.ends_with("/manual-payment") || route.ends_with("/refund"))
        {
            Self::Checkout
        } else {
            Self::General
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|class| class.as_str() == text)
    }
}

/// `count` requests per `per`, at most `burst` at once (GCRA: one request every
/// `per / count`, with `burst` of them allowed back to back).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub count: u32,
    pub per: Duration,
    pub burst: u32,
}

impl Limit {
    /// `rate` per second, with bursts of twice that: what the per-key and per-IP flags mean.
    pub fn per_second(rate: u32) -> Self {
        let rate = rate.max(1);
        Self {
            count: rate,
            per: Duration::from_secs(1),
            burst: rate.saturating_mul(2),
        }
    }

    /// GCRA's emission interval: seconds per request at the sustained rate.
    pub fn interval(&self) -> f64 {
        self.per.as_secs_f64() / f64::from(self.count.max(1))
    }

    /// Requests per second at the sustained rate.
    pub fn rate(&self) -> f64 {
        1.0 / self.interval()
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s:{}", self.count, self.per.as_secs(), self.burst)
    }
}

/// One `class.scope=value` override of `TOMBOLA_RATE_LIMITS`; `limit: None` is `off`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRule {
    /// `None`: `*`, every class.
    pub class: Option<RouteClass>,
    pub scope: Scope,
    pub limit: Option<Limit>,
}

impl std::str::FromStr for LimitRule {
    type Err = String;

    /// `reserve.key=20/s`, `checkout.ip=300/min:60` (a burst of 60), `webhooks.ip=off`,
    /// `*.ip=100/s`. Without `:burst`, the burst is the count (a full period at once).
    fn from_str(text: &str) -> Result<Self, String> {
        let expected = "expected class.scope=N/unit[:burst] or class.scope=off, e.g. \
                        reserve.key=20/s (classes: reserve, checkout, general, webhooks, *; \
                        scopes: key, ip; units: s, min, h)";
        let (target, value) = text.trim().split_once('=').ok_or(expected)?;
        let (class, scope) = target.trim().split_once('.').ok_or(expected)?;
        let class = match class {
            "*" => None,
            other => Some(RouteClass::parse(other).ok_or(expected)?),
        };
        let scope = match scope {
            "key" => Scope::Key,
            "ip" => Scope::Ip,
            _ => return Err(expected.into()),
        };
        let value = value.trim();
        if value == "off" {
            return Ok(Self {
                class,
                scope,
                limit: None,
            });
        }
        let (rate, burst) = match value.split_once(':') {
            Some((rate, burst)) => (rate, Some(burst)),
            None => (value, None),
        };
        let (count, unit) = rate.split_once('/').ok_or(expected)?;
        let count: u32 = count.trim().parse().map_err(|_| expected)?;
        let per = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(expected.into()),
        };
        let burst = match burst {
            Some(burst) => burst.trim().parse().map_err(|_| expected)?,
            None => count,
        };
        if count == 0 || burst == 0 {
            return Err(format!(
                "{text}: a limit of 0 refuses everything; use off for none"
            ));
        }
        Ok(Self {
            class,
            scope,
            limit: Some(Limit { count, per, burst }),
        })
    }
}

/// Every limit in force: `None` for a (scope, class) means unlimited.
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    limits: HashMap<(Scope, RouteClass), Option<Limit>>,
    /// How much of a limit's rate a node leases at a time: see [`LimitsConfig::lease_size`].
    pub lease_window: Duration,
}

impl LimitsConfig {
    /// `per_key` and `per_ip` requests per second (bursts of twice that) for every class,
    /// except that webhooks have no per-IP limit: a provider sends from a handful of
    /// addresses, and its retries must not be turned away. `rules` override, in order.
    pub fn new(per_key: u32, per_ip: u32, rules: &[LimitRule], lease_window: Duration) -> Self {
        let mut limits = HashMap::new();
        for class in RouteClass::ALL {
            limits.insert((Scope::Key, class), Some(Limit::per_second(per_key)));
            limits.insert((Scope::Ip, class), Some(Limit::per_second(per_ip)));
        }
        limits.insert((Scope::Ip, RouteClass::Webhooks), None);
        for rule in rules {
            for class in RouteClass::ALL {
                if rule.class.is_none_or(|c| c == class) {
                    limits.insert((rule.scope, class), rule.limit);
                }
            }
        }
        Self {
            limits,
            lease_window,
        }
    }

    pub fn get(&self, scope: Scope, class: RouteClass) -> Option<Limit> {
        self.limits.get(&(scope, class)).copied().flatten()
    }

    /// Tokens a node takes from the shared bucket at a time: the limit's rate over the lease
    /// window (100 ms by default), at least 1 and at most a quarter of the burst, so that two
    /// nodes still share a small burst. Unspent leased tokens are what the shared limit can
    /// be exceeded by in any window: at most one lease per node.
    pub fn lease_size(&self, limit: &Limit) -> u32 {
        let by_rate = (limit.rate() * self.lease_window.as_secs_f64()).ceil() as u32;
        by_rate.clamp(1, (limit.burst / 4).max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn rules_parse_and_override_in_order() {
        let rules: Vec<LimitRule> = ["*.ip=100/s", "reserve.key=1200/min:60", "general.ip=off"]
            .iter()
            .map(|r| r.parse().unwrap())
            .collect();
        let config = LimitsConfig::new(10, 5, &rules, Duration::from_millis(100));
        assert_eq!(
            config.get(Scope::Key, RouteClass::Reserve),
            Some(Limit {
                count: 1200,
                per: Duration::from_secs(60),
                burst: 60
            })
        );
        assert_eq!(
            config.get(Scope::Key, RouteClass::General),
            Some(Limit::per_second(10))
        );
        assert_eq!(config.get(Scope::Ip, RouteClass::General), None);
        assert_eq!(
            config.get(Scope::Ip, RouteClass::Webhooks).map(|l| l.burst),
            Some(100)
        );
        for bad in [
            "reserve=1/s",
            "x.key=1/s",
            "reserve.key=0/s",
            "reserve.key=1/week",
            "",
        ] {
            assert!(bad.parse::<LimitRule>().is_err(), "{bad}");
        }
    }

    #[test]
    fn webhooks_have_no_per_ip_limit_unless_configured() {
        let config = LimitsConfig::new(10, 5, &[], Duration::from_millis(100));
        assert_eq!(config.get(Scope::Ip, RouteClass::Webhooks), None);
        assert!(config.get(Scope::Ip, RouteClass::Reserve).is_some());
    }

    #[test]
    fn leases_follow_the_rate_within_a_quarter_of_the_burst() {
        let config = LimitsConfig::new(1, 1, &[], Duration::from_millis(100));
        assert_eq!(config.lease_size(&Limit::per_second(2000)), 200);
        assert_eq!(config.lease_size(&Limit::per_second(1)), 1);
        let per_minute = "general.key=1200/min".parse::<LimitRule>().unwrap();
        assert_eq!(config.lease_size(&per_minute.limit.unwrap()), 2);
        let small_burst = "general.key=1000/s:8".parse::<LimitRule>().unwrap();
        assert_eq!(config.lease_size(&small_burst.limit.unwrap()), 2);
    }

    #[test]
    fn routes_fall_into_their_class() {
        let class = |m: Method, r: &str| RouteClass::of(&m, Some(r));
        assert_eq!(
            class(Method::POST, "/v1/raffles/{id}/reservations"),
            RouteClass::Reserve
        );
        assert_eq!(
            class(
                Method::POST,
                "/v1/raffles/{id}/orders/{order_id}/manual-payment"
            ),
            RouteClass::Checkout
        );
        assert_eq!(
            class(Method::POST, "/v1/raffles/{id}/orders/{order_id}/refund"),
            RouteClass::Checkout
        );
        assert_eq!(
            class(Method::POST, "/v1/webhooks/stripe"),
            RouteClass::Webhooks
        );
        assert_eq!(class(Method::GET, "/v1/raffles/{id}"), RouteClass::General);
        assert_eq!(RouteClass::of(&Method::GET, None), RouteClass::General);
    }
}

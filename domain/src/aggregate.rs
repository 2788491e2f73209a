//! The `Raffle` aggregate: decides commands against its state, and applies events.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::Aggregate;
use roaring::RoaringBitmap;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::clock::RaffleServices;
use crate::commands::{
    ConfirmManualPayment, ProviderPayment, RaffleCommand, RecordPaymentFailure, RefundOrder,
    Reserve, Selection,
};
use crate::config::{LatePaymentPolicy, RaffleConfig};
use crate::draw::{self, Winner};
use crate::errors::{LimitKind, RaffleError};
use crate::events::{ExpiredHold, Payment, RaffleEvent, RefundReason};
use crate::money::Money;
use crate::orders::{
    from_secs, to_secs_ceil, to_secs_floor, OrderBook, OrderStatus, OrderView, NO_ORDER,
};
use crate::tickets::{TicketPool, TicketState};
use crate::values::{digest64, Email, PlusAddressing};

/// The per-buyer limit's key for `email`: the digest of who it counts as (see
/// [`Email::identity`]). A plain ASCII address under the default setting is its own
/// identity, so the common case costs no normalisation.
fn buyer_key(config: Option<&RaffleConfig>, email: &Email) -> u64 {
    let plus = config.map_or(PlusAddressing::default(), |c| c.plus_addressing);
    if plus == PlusAddressing::SeparateBuyers && email.as_str().is_ascii() {
        digest64(email.as_str())
    } else {
        digest64(&email.identity(plus))
    }
}

/// A recorded payment failure's entry in the payment index: keyed by the provider's event,
/// since one payment may fail several times. Prefixed, so it never equals a payment id's.
fn failure_key(provider: &str, provider_event_id: &str) -> u64 {
    digest64(&format!("failure\0{provider}\0{provider_event_id}"))
}

/// Holds expired per `HoldsExpired` event; a sweep of more continues in the next command.
pub const MAX_EXPIRY_BATCH: usize = 5_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RaffleStatus {
    #[default]
    Draft,
    OnSale,
    Closed,
    Drawn,
    Cancelled,
}

impl RaffleStatus {
    /// The stable name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::OnSale => "on_sale",
            Self::Closed => "closed",
            Self::Drawn => "drawn",
            Self::Cancelled => "cancelled",
        }
    }

    /// The status named as in JSON, or `None`.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Draft,
            Self::OnSale,
            Self::Closed,
            Self::Drawn,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Raffle {
    pub(crate) config: Option<Box<RaffleConfig>>,
    pub(crate) status: RaffleStatus,
    pub(crate) tickets: TicketPool,
    pub(crate) orders: OrderBook,
    pub(crate) winners: Vec<Winner>,
}

type Decision = Result<Vec<RaffleEvent>, RaffleError>;
/// Issued numbers with their issue time, and the order owning each.
type IssuedTickets = (
    Vec<(u32, DateTime<Utc>)>,
    std::collections::HashMap<u32, Uuid>,
);

impl Raffle {
    // ----- queries -----

    pub fn config(&self) -> Option<&RaffleConfig> {
        self.config.as_deref()
    }

    pub fn status(&self) -> RaffleStatus {
        self.status
    }

    pub fn available_count(&self) -> u64 {
        self.tickets.free_count()
    }

    pub fn sold_count(&self) -> u64 {
        self.tickets.issued_count()
    }

    pub fn reserved_count(&self) -> u64 {
        self.config().map_or(0, |c| u64::from(c.ticket_count))
            - self.available_count()
            - self.sold_count()
    }

    pub fn ticket_state(&self, number: u32) -> Option<TicketState> {
        let config = self.config()?;
        config
            .contains_number(number)
            .then(|| self.tickets.state(number))
    }

    /// The free numbers, for number pickers (serialize with roaring's portable format).
    pub fn free_numbers(&self) -> &RoaringBitmap {
        &self.tickets.free
    }

    pub fn winners(&self) -> &[Winner] {
        &self.winners
    }

    pub fn order_count(&self) -> usize {
        self.orders.len()
    }

    pub fn order(&self, order_id: Uuid) -> Option<OrderView> {
        let config = self.config()?;
        let pos = self.orders.find(&order_id)?;
        let order = self.orders.get(pos);
        Some(OrderView {
            order_id,
            status: order.status,
            numbers: self.orders.numbers_vec(pos),
            // Orders of a raffle priced before totals were bounded may have none.
            amount_minor: config
                .price_for(order.numbers_len)
                .map_or(i64::MAX, Money::minor),
            currency: config.currency,
            reserved_at: from_secs(order.reserved_at),
            expires_at: from_secs(order.expires_at),
            issued_at: (order.status == OrderStatus::Paid).then(|| from_secs(order.issued_at)),
        })
    }

    /// When the earliest live hold ends: the writer's next timer.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.orders.next_expiry().map(from_secs)
    }

    // ----- decisions -----

    /// Decides `command` against the current state without changing it. An empty list means
    /// the command was a duplicate of one already applied: nothing to do, nothing to store.
    pub fn decide(&self, command: RaffleCommand, services: &RaffleServices) -> Decision {
        let now = services.now();
        if let RaffleCommand::Create(create) = command {
            if self.config.is_some() {
                return Err(RaffleError::RaffleAlreadyExists);
            }
            let config = RaffleConfig::parse(create)?;
            return Ok(vec![RaffleEvent::RaffleCreated { config, at: now }]);
        }
        let config = self.config().ok_or(RaffleError::RaffleNotFound)?;
        match command {
            RaffleCommand::Create(_) => unreachable!("handled above"),
            RaffleCommand::OpenSales => match self.status {
                RaffleStatus::Draft => Ok(vec![RaffleEvent::SalesOpened { at: now }]),
                RaffleStatus::OnSale => Ok(vec![]),
                status => Err(RaffleError::InvalidRaffleState {
                    status,
                    expected: "draft".into(),
                }),
            },
            RaffleCommand::Reserve(reserve) => self.reserve(config, reserve, now, services),
            RaffleCommand::Release { order_id } => self.release(order_id, now),
            RaffleCommand::ExpireDueHolds => Ok(self.expire_due_holds(now)),
            RaffleCommand::ExtendHold { order_id, until } => {
                self.extend_hold(config, order_id, until, now)
            }
            RaffleCommand::RecordPayment(payment) => {
                self.record_payment(config, payment, now, services)
            }
            RaffleCommand::RecordPaymentFailure(failure) => self.record_failure(failure, now),
            RaffleCommand::ConfirmManualPayment(manual) => {
                self.confirm_manual(config, manual, now, services)
            }
            RaffleCommand::Refund(refund) => self.refund(config, refund, now),
            RaffleCommand::CloseSales => match self.status {
                RaffleStatus::OnSale => Ok(vec![RaffleEvent::SalesClosed { at: now }]),
                RaffleStatus::Closed => Ok(vec![]),
                status => Err(RaffleError::InvalidRaffleState {
                    status,
                    expected: "on_sale".into(),
                }),
            },
            RaffleCommand::Draw {
                seed,
                public_entropy,
            } => self.draw(config, seed, public_entropy, now),
            RaffleCommand::Cancel { reason } => match self.status {
                RaffleStatus::Cancelled => Ok(vec![]),
                RaffleStatus::Drawn => Err(RaffleError::InvalidRaffleState {
                    status: RaffleStatus::Drawn,
                    expected: "not yet drawn".into(),
                }),
                _ => Ok(vec![RaffleEvent::RaffleCancelled { reason, at: now }]),
            },
        }
    }

    fn order_pos(&self, order_id: Uuid) -> Result<u32, RaffleError> {
        self.orders
            .find(&order_id)
            .ok_or(RaffleError::OrderNotFound { order_id })
    }

    fn reserve(
        &self,
        config: &RaffleConfig,
        Reserve {
            order_id,
            buyer,
            selection,
        }: Reserve,
        now: DateTime<Utc>,
        services: &RaffleServices,
    ) -> Decision {
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            });
        }
        if self.orders.find(&order_id).is_some() {
            return Err(RaffleError::OrderAlreadyExists { order_id });
        }
        let requested = match &selection {
            Selection::Numbers(numbers) => numbers.len() as u32,
            Selection::Random(quantity) => *quantity,
        };
        if requested == 0 {
            return Err(RaffleError::InvalidQuantity);
        }
        if requested > config.max_tickets_per_order {
            return Err(RaffleError::LimitExceeded {
                kind: LimitKind::PerOrder,
                limit: config.max_tickets_per_order,
                requested,
                held: 0,
            });
        }
        if let (Some(limit), Some(held)) = (
            config.max_tickets_per_buyer,
            self.orders
                .buyer_held(buyer_key(Some(config), buyer.email())),
        ) {
            if held + requested > limit {
                return Err(RaffleError::LimitExceeded {
                    kind: LimitKind::PerBuyer,
                    limit,
                    requested,
                    held,
                });
            }
        }
        let numbers = match selection {
            Selection::Numbers(mut numbers) => {
                let outside: Vec<u32> = numbers
                    .iter()
                    .copied()
                    .filter(|n| !config.contains_number(*n))
                    .collect();
                if !outside.is_empty() {
                    return Err(RaffleError::InvalidTicketNumber { numbers: outside });
                }
                numbers.sort_unstable();
                let repeated: Vec<u32> = numbers
                    .windows(2)
                    .filter(|w| w[0] == w[1])
                    .map(|w| w[0])
                    .collect();
                if !repeated.is_empty() {
                    return Err(RaffleError::DuplicateTicketNumber { numbers: repeated });
                }
                let taken = self.tickets.taken(&numbers);
                if !taken.is_empty() {
                    return Err(RaffleError::TicketsUnavailable { numbers: taken });
                }
                numbers
            }
            Selection::Random(quantity) => self
                .tickets
                .pick_random(quantity, services.rng().as_mut())?,
        };
        let amount = config.price_for(numbers.len() as u32)?;
        Ok(vec![RaffleEvent::TicketsReserved {
            order_id,
            buyer,
            amount_minor: amount.minor(),
            currency: config.currency,
            numbers,
            at: now,
            expires_at: now + Duration::seconds(i64::from(config.hold_seconds)),
        }])
    }

    fn release(&self, order_id: Uuid, now: DateTime<Utc>) -> Decision {
        let pos = self.order_pos(order_id)?;
        match self.orders.get(pos).status {
            OrderStatus::Reserved => Ok(vec![RaffleEvent::ReservationReleased {
                order_id,
                numbers: self.orders.numbers_vec(pos),
                at: now,
            }]),
            OrderStatus::Released => Ok(vec![]),
            status => Err(RaffleError::InvalidOrderState { order_id, status }),
        }
    }

    fn expire_due_holds(&self, now: DateTime<Utc>) -> Vec<RaffleEvent> {
        let due = self.orders.due_holds(to_secs_floor(now), MAX_EXPIRY_BATCH);
        if due.is_empty() {
            return vec![];
        }
        let holds = due
            .into_iter()
            .map(|pos| ExpiredHold {
                order_id: self.orders.get(pos).id,
                numbers: self.orders.numbers_vec(pos),
            })
            .collect();
        vec![RaffleEvent::HoldsExpired { holds, at: now }]
    }

    fn extend_hold(
        &self,
        config: &RaffleConfig,
        order_id: Uuid,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Decision {
        let pos = self.order_pos(order_id)?;
        let order = self.orders.get(pos);
        match order.status {
            OrderStatus::Reserved => {}
            // A pending notice that arrives after the money did changes nothing.
            OrderStatus::Paid => return Ok(vec![]),
            status => return Err(RaffleError::InvalidOrderState { order_id, status }),
        }
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            });
        }
        let cap =
            from_secs(order.reserved_at) + Duration::seconds(i64::from(config.max_hold_seconds));
        let expires_at = until.min(cap);
        if to_secs_ceil(expires_at) <= order.expires_at {
            return Ok(vec![]);
        }
        Ok(vec![RaffleEvent::HoldExtended {
            order_id,
            expires_at,
            at: now,
        }])
    }

    fn record_payment(
        &self,
        config: &RaffleConfig,
        payment: ProviderPayment,
        now: DateTime<Utc>,
        services: &RaffleServices,
    ) -> Decision {
        let order_id = payment.order_id;
        let pos = self.orders.find(&order_id);
        let seen_on = self
            .orders
            .payments
            .get(&digest64(&payment.payment_id))
            .copied();
        let recorded = RaffleEvent::PaymentRecorded {
            order_id,
            payment: Payment {
                provider: payment.provider,
                payment_id: payment.payment_id.clone(),
                provider_event_id: payment.provider_event_id,
                amount_minor: payment.amount_minor,
                currency: payment.currency,
                method: payment.method,
            },
            at: now,
        };
        let refund = |reason, amount_minor| RaffleEvent::RefundRequired {
            order_id,
            payment_id: Some(payment.payment_id.clone()),
            amount_minor,
            currency: payment.currency,
            reason,
            at: now,
        };
        if let Some(seen_on) = seen_on {
            if seen_on == pos.unwrap_or(NO_ORDER) {
                return Ok(vec![]);
            }
            // The same payment id on another order: a provider metadata mix-up (or a 64-bit
            // digest collision). Keep the money visible rather than guess.
            let flagged = self.flag(
                config,
                order_id,
                pos,
                &payment.payment_id,
                "payment_id_reused",
                now,
            );
            return Ok(vec![recorded, flagged]);
        }
        let Some(pos) = pos else {
            return Ok(vec![
                recorded,
                refund(RefundReason::UnknownOrder, payment.amount_minor),
            ]);
        };
        let order = self.orders.get(pos);
        let outcome = match order.status {
            OrderStatus::Paid => refund(RefundReason::AlreadyPaid, payment.amount_minor),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                refund(RefundReason::OrderNotPayable, payment.amount_minor)
            }
            _ if !matches!(
                (config.price_for(order.numbers_len), Money::new(payment.amount_minor, payment.currency)),
                (Ok(due), Ok(paid)) if due == paid
            ) =>
            {
                self.flag(
                    config,
                    order_id,
                    Some(pos),
                    &payment.payment_id,
                    "amount_mismatch",
                    now,
                )
            }
            _ if self.status != RaffleStatus::OnSale => {
                refund(RefundReason::SalesClosed, payment.amount_minor)
            }
            _ => self
                .issue(config, pos, now, services)
                .unwrap_or_else(|reason| refund(reason, payment.amount_minor)),
        };
        Ok(vec![recorded, outcome])
    }

    fn flag(
        &self,
        config: &RaffleConfig,
        order_id: Uuid,
        pos: Option<u32>,
        payment_id: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> RaffleEvent {
        RaffleEvent::PaymentFlagged {
            order_id,
            payment_id: payment_id.to_owned(),
            reason: reason.to_owned(),
            expected_amount_minor: pos.map_or(0, |p| {
                config
                    .price_for(self.orders.get(p).numbers_len)
                    .map_or(i64::MAX, Money::minor)
            }),
            expected_currency: config.currency,
            at,
        }
    }

    /// Issues a payable order's tickets: its own numbers while held or still free, otherwise
    /// substitutes if the raffle allows it. `Err` says why the payment must be refunded.
    fn issue(
        &self,
        config: &RaffleConfig,
        pos: u32,
        now: DateTime<Utc>,
        services: &RaffleServices,
    ) -> Result<RaffleEvent, RefundReason> {
        let order = self.orders.get(pos);
        let numbers = self.orders.numbers_vec(pos);
        let issued = |numbers, late, replaced_numbers| RaffleEvent::TicketsIssued {
            order_id: order.id,
            numbers,
            late,
            replaced_numbers,
            at: now,
        };
        if order.status == OrderStatus::Reserved {
            return Ok(issued(numbers, false, vec![]));
        }
        if self.tickets.taken(&numbers).is_empty() {
            return Ok(issued(numbers, true, vec![]));
        }
        if config.late_payment_policy == LatePaymentPolicy::Substitute {
            if let Ok(substitutes) = self
                .tickets
                .pick_random(order.numbers_len, services.rng().as_mut())
            {
                return Ok(issued(substitutes, true, numbers));
            }
        }
        Err(RefundReason::TicketsTaken)
    }

    fn record_failure(&self, failure: RecordPaymentFailure, now: DateTime<Utc>) -> Decision {
        self.order_pos(failure.order_id)?;
        // A provider retries a delivery it believes lost: the same failure, once.
        let key = failure_key(&failure.provider, &failure.provider_event_id);
        if self.orders.payments.contains_key(&key) {
            return Ok(vec![]);
        }
        Ok(vec![RaffleEvent::PaymentFailed {
            order_id: failure.order_id,
            provider: failure.provider,
            payment_id: failure.payment_id,
            provider_event_id: failure.provider_event_id,
            reason: failure.reason,
            at: now,
        }])
    }

    fn confirm_manual(
        &self,
        config: &RaffleConfig,
        manual: ConfirmManualPayment,
        now: DateTime<Utc>,
        services: &RaffleServices,
    ) -> Decision {
        let order_id = manual.order_id;
        let pos = self.order_pos(order_id)?;
        let order = self.orders.get(pos);
        match order.status {
            OrderStatus::Paid => return Ok(vec![]),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                return Err(RaffleError::InvalidOrderState {
                    order_id,
                    status: order.status,
                })
            }
            _ => {}
        }
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            });
        }
        let amount_minor = config.price_for(order.numbers_len)?.minor();
        let confirmed = RaffleEvent::ManualPaymentConfirmed {
            order_id,
            method: manual.method,
            reference: manual.reference,
            confirmed_by: manual.confirmed_by,
            amount_minor,
            currency: config.currency,
            at: now,
        };
        let outcome = self
            .issue(config, pos, now, services)
            .unwrap_or_else(|reason| RaffleEvent::RefundRequired {
                order_id,
                payment_id: None,
                amount_minor,
                currency: config.currency,
                reason,
                at: now,
            });
        Ok(vec![confirmed, outcome])
    }

    fn refund(&self, config: &RaffleConfig, refund: RefundOrder, now: DateTime<Utc>) -> Decision {
        let order_id = refund.order_id;
        let pos = self.order_pos(order_id)?;
        let order = self.orders.get(pos);
        match order.status {
            OrderStatus::Paid | OrderStatus::RefundRequired => {}
            OrderStatus::Refunded => return Ok(vec![]),
            status => return Err(RaffleError::InvalidOrderState { order_id, status }),
        }
        let amount_minor = config.price_for(order.numbers_len)?.minor();
        match refund.amount_refunded_minor {
            Some(refunded) if refunded <= 0 => Err(RaffleError::InvalidRefundAmount),
            Some(refunded) if refunded < amount_minor => {
                let before = self.orders.partial_refunds.get(&pos).copied().unwrap_or(0);
                if refunded <= before {
                    return Ok(vec![]);
                }
                Ok(vec![RaffleEvent::PaymentPartiallyRefunded {
                    order_id,
                    amount_refunded_minor: refunded,
                    refund_id: refund.refund_id,
                    at: now,
                }])
            }
            _ => Ok(vec![RaffleEvent::OrderRefunded {
                order_id,
                numbers: self.orders.numbers_vec(pos),
                amount_minor,
                returned_to_pool: order.status == OrderStatus::Paid
                    && self.status == RaffleStatus::OnSale,
                reason: refund.reason,
                refund_id: refund.refund_id,
                at: now,
            }]),
        }
    }

    fn draw(
        &self,
        config: &RaffleConfig,
        seed: String,
        public_entropy: String,
        now: DateTime<Utc>,
    ) -> Decision {
        if self.status != RaffleStatus::Closed {
            return Err(RaffleError::InvalidRaffleState {
                status: self.status,
                expected: "closed".into(),
            });
        }
        draw::verify_seed(&seed, &config.draw_commitment)
            .map_err(|_| RaffleError::DrawSeedMismatch)?;
        let (issued, owners) = self.issued_tickets();
        let winners = draw::draw_winners(&seed, &public_entropy, &config.prizes, &issued)
            .into_iter()
            .zip(&config.prizes)
            .enumerate()
            .filter_map(|(index, (number, prize))| {
                let number = number?;
                Some(Winner {
                    prize_index: index as u32,
                    prize: prize.name.clone(),
                    number,
                    order_id: owners[&number],
                })
            })
            .collect();
        Ok(vec![RaffleEvent::WinnersDrawn {
            seed,
            public_entropy,
            winners,
            at: now,
        }])
    }

    /// Every issued ticket with its issue time, and who owns it.
    fn issued_tickets(&self) -> IssuedTickets {
        let mut issued = Vec::with_capacity(self.tickets.issued_count() as usize);
        let mut owners = std::collections::HashMap::with_capacity(issued.capacity());
        for (pos, order) in self.orders.orders.iter().enumerate() {
            if order.status == OrderStatus::Paid {
                for number in self.orders.numbers_of(pos as u32) {
                    issued.push((number, from_secs(order.issued_at)));
                    owners.insert(number, order.id);
                }
            }
        }
        (issued, owners)
    }

    // ----- evolution -----

    /// Folds one event into the state. Events are facts: this never fails and never decides.
    pub fn apply_event(&mut self, event: &RaffleEvent) {
        match event {
            RaffleEvent::RaffleCreated { config, .. } => {
                self.tickets = TicketPool::new(config.first_number, config.last_number());
                self.orders = OrderBook::new(config.max_tickets_per_buyer.is_some());
                self.config = Some(Box::new(config.clone()));
                self.status = RaffleStatus::Draft;
            }
            RaffleEvent::SalesOpened { .. } => self.status = RaffleStatus::OnSale,
            RaffleEvent::TicketsReserved {
                order_id,
                buyer,
                numbers,
                at,
                expires_at,
                ..
            } => {
                self.tickets.hold(numbers);
                self.orders.insert_reserved(
                    *order_id,
                    numbers,
                    buyer_key(self.config.as_deref(), buyer.email()),
                    to_secs_floor(*at),
                    to_secs_ceil(*expires_at),
                );
            }
            RaffleEvent::ReservationReleased {
                order_id, numbers, ..
            } => {
                self.tickets.release(numbers.iter().copied());
                self.set_status(*order_id, OrderStatus::Released);
            }
            RaffleEvent::HoldsExpired { holds, .. } => {
                for hold in holds {
                    self.tickets.release(hold.numbers.iter().copied());
                    self.set_status(hold.order_id, OrderStatus::Expired);
                }
            }
            RaffleEvent::HoldExtended {
                order_id,
                expires_at,
                ..
            } => {
                if let Some(pos) = self.orders.find(order_id) {
                    self.orders.set_expiry(pos, to_secs_ceil(*expires_at));
                }
            }
            RaffleEvent::PaymentRecorded {
                order_id, payment, ..
            } => {
                let pos = self.orders.find(order_id).unwrap_or(NO_ORDER);
                self.orders
                    .payments
                    .entry(digest64(&payment.payment_id))
                    .or_insert(pos);
            }
            RaffleEvent::TicketsIssued {
                order_id,
                numbers,
                replaced_numbers,
                at,
                ..
            } => {
                if let Some(pos) = self.orders.find(order_id) {
                    if !replaced_numbers.is_empty() {
                        self.orders.replace_numbers(pos, numbers);
                    }
                    self.tickets.issue(numbers);
                    self.orders.set_issued_at(pos, to_secs_floor(*at));
                    self.orders.set_status(pos, OrderStatus::Paid);
                }
            }
            RaffleEvent::RefundRequired { order_id, .. } => {
                let Some(pos) = self.orders.find(order_id) else {
                    return;
                };
                match self.orders.get(pos).status {
                    OrderStatus::Reserved => {
                        self.tickets.release(self.orders.numbers_of(pos));
                        self.orders.set_status(pos, OrderStatus::RefundRequired);
                    }
                    OrderStatus::Expired | OrderStatus::Released => {
                        self.orders.set_status(pos, OrderStatus::RefundRequired);
                    }
                    // A second payment for a paid order: the order itself stays paid.
                    _ => {}
                }
            }
            RaffleEvent::PaymentPartiallyRefunded {
                order_id,
                amount_refunded_minor,
                ..
            } => {
                if let Some(pos) = self.orders.find(order_id) {
                    self.orders
                        .partial_refunds
                        .insert(pos, *amount_refunded_minor);
                }
            }
            RaffleEvent::OrderRefunded { order_id, .. } => {
                let Some(pos) = self.orders.find(order_id) else {
                    return;
                };
                if self.orders.get(pos).status == OrderStatus::Paid {
                    self.tickets.return_issued(self.orders.numbers_of(pos));
                }
                self.orders.set_status(pos, OrderStatus::Refunded);
            }
            RaffleEvent::SalesClosed { .. } => self.status = RaffleStatus::Closed,
            RaffleEvent::WinnersDrawn { winners, .. } => {
                self.winners = winners.clone();
                self.status = RaffleStatus::Drawn;
            }
            RaffleEvent::RaffleCancelled { .. } => {
                self.status = RaffleStatus::Cancelled;
                for pos in 0..self.orders.len() as u32 {
                    match self.orders.get(pos).status {
                        OrderStatus::Reserved => {
                            self.tickets.release(self.orders.numbers_of(pos));
                            self.orders.set_status(pos, OrderStatus::Released);
                        }
                        OrderStatus::Paid => {
                            self.tickets.return_issued(self.orders.numbers_of(pos));
                            self.orders.set_status(pos, OrderStatus::RefundRequired);
                        }
                        _ => {}
                    }
                }
            }
            RaffleEvent::PaymentFailed {
                order_id,
                provider,
                provider_event_id,
                ..
            } => {
                let pos = self.orders.find(order_id).unwrap_or(NO_ORDER);
                self.orders
                    .payments
                    .entry(failure_key(provider, provider_event_id))
                    .or_insert(pos);
            }
            RaffleEvent::ManualPaymentConfirmed { .. } | RaffleEvent::PaymentFlagged { .. } => {}
        }
    }

    fn set_status(&mut self, order_id: Uuid, status: OrderStatus) {
        if let Some(pos) = self.orders.find(&order_id) {
            self.orders.set_status(pos, status);
        }
    }
}

impl Aggregate for Raffle {
    const TYPE: &'static str = "raffle";
    type Command = RaffleCommand;
    type Event = RaffleEvent;
    type Error = RaffleError;
    type Services = RaffleServices;

    async fn handle(
        &mut self,
        command: Self::Command,
        services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, services)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.apply_event(&event);
    }
}

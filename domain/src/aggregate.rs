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
    from_secs, to_secs_ceil, to_secs_floor, OrderBook, OrderStatus, OrderView, Secs, NO_ORDER,
};
use crate::resident::{
    first_recorded, order_digest, DigestSet, Need, OrderDetails, Settled, Supplied,
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
    /// `Some` once compact ([`Raffle::compact`]): `orders` then keeps live holds only.
    pub(crate) settled: Option<Box<Settled>>,
}

type Decision = Result<Vec<RaffleEvent>, RaffleError>;

/// Why a decision stopped: refused, or waiting for events a compact raffle does not keep.
enum Stop {
    Refused(RaffleError),
    Needs(Need),
}

impl From<RaffleError> for Stop {
    fn from(error: RaffleError) -> Self {
        Self::Refused(error)
    }
}

impl From<Need> for Stop {
    fn from(need: Need) -> Self {
        Self::Needs(need)
    }
}

type Step = Result<Vec<RaffleEvent>, Stop>;

/// An order as a decision sees it: from its resident record, or (a compact raffle's settled
/// order) from its own events.
struct Facts {
    status: OrderStatus,
    numbers: Vec<u32>,
    reserved_at: Secs,
    expires_at: Secs,
    issued_at: Secs,
    partial_refunded: i64,
}

impl Facts {
    fn len(&self) -> u32 {
        self.numbers.len() as u32
    }
}
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

    /// Orders the raffle ever had.
    pub fn order_count(&self) -> usize {
        match &self.settled {
            Some(settled) => settled.orders.len(),
            None => self.orders.len(),
        }
    }

    /// The order as its resident record shows it: every order of a full raffle, only live
    /// holds of a compact one (use [`Self::order_with`] there).
    pub fn order(&self, order_id: Uuid) -> Option<OrderView> {
        self.order_with(order_id, &Supplied::default())
            .ok()
            .flatten()
    }

    /// The order, or the events a compact raffle needs to show it.
    pub fn order_with(
        &self,
        order_id: Uuid,
        supplied: &Supplied,
    ) -> Result<Option<OrderView>, Need> {
        let Some(config) = self.config() else {
            return Ok(None);
        };
        let Some(facts) = self.facts(order_id, supplied)? else {
            return Ok(None);
        };
        Ok(Some(OrderView {
            order_id,
            status: facts.status,
            // Orders of a raffle priced before totals were bounded may have none.
            amount_minor: config.price_for(facts.len()).map_or(i64::MAX, Money::minor),
            currency: config.currency,
            reserved_at: from_secs(facts.reserved_at),
            expires_at: from_secs(facts.expires_at),
            issued_at: (facts.status == OrderStatus::Paid).then(|| from_secs(facts.issued_at)),
            numbers: facts.numbers,
        }))
    }

    /// [`Self::order_with`], answering its need from `log` (every event so far, in order).
    pub fn order_from_log(&self, order_id: Uuid, log: &[RaffleEvent]) -> Option<OrderView> {
        let mut supplied = Supplied::default();
        loop {
            match self.order_with(order_id, &supplied) {
                Ok(view) => return view,
                Err(need) => {
                    assert!(!supplied.has(&need), "a need met is not asked again");
                    let events = log.iter().filter(|e| need.matches(e)).cloned().collect();
                    supplied.supply(need, events);
                }
            }
        }
    }

    /// When the earliest live hold ends: the writer's next timer.
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.orders.next_expiry().map(from_secs)
    }

    /// When the last live hold ends: after sales close, holds only leave, so this bounds
    /// how long the raffle still needs its expiry timer.
    pub fn last_expiry(&self) -> Option<DateTime<Utc>> {
        self.orders.last_expiry().map(from_secs)
    }

    /// Whether settled orders are kept as digests (decision 0022).
    pub fn is_compact(&self) -> bool {
        self.settled.is_some()
    }

    // ----- decisions -----

    /// Decides `command` against the current state without changing it. An empty list means
    /// the command was a duplicate of one already applied: nothing to do, nothing to store.
    /// A compact raffle may need events from its log: decide it with [`Self::decide_with`]
    /// (or [`Self::decide_from_log`]); here such a command is refused as unavailable.
    pub fn decide(&self, command: RaffleCommand, services: &RaffleServices) -> Decision {
        self.decide_with(command, services, &Supplied::default())
            .unwrap_or_else(|need| {
                Err(RaffleError::InvalidRaffleState {
                    status: self.status,
                    expected: format!("its log read first ({need:?})").into(),
                })
            })
    }

    /// Decides `command`, or names the events it needs first (`Err`): supply them and ask
    /// again. Nothing is decided until every need is met, so asking again is safe.
    pub fn decide_with(
        &self,
        command: RaffleCommand,
        services: &RaffleServices,
        supplied: &Supplied,
    ) -> Result<Decision, Need> {
        match self.step(command, services, supplied) {
            Ok(events) => Ok(Ok(events)),
            Err(Stop::Refused(error)) => Ok(Err(error)),
            Err(Stop::Needs(need)) => Err(need),
        }
    }

    /// [`Self::decide_with`], answering needs from `log`: every event of the stream so far, in
    /// order. What the engine does with its database, for callers holding the log.
    pub fn decide_from_log(
        &self,
        command: RaffleCommand,
        services: &RaffleServices,
        log: &[RaffleEvent],
    ) -> Decision {
        let mut supplied = Supplied::default();
        loop {
            match self.decide_with(command.clone(), services, &supplied) {
                Ok(decision) => return decision,
                Err(need) if supplied.has(&need) => {
                    unreachable!("a need met is not asked again: {need:?}")
                }
                Err(Need::Log) => {
                    let mut full = Raffle::default();
                    log.iter().for_each(|event| full.apply_event(event));
                    supplied.supply_log(full);
                }
                Err(need) => {
                    let events = log.iter().filter(|e| need.matches(e)).cloned().collect();
                    supplied.supply(need, events);
                }
            }
        }
    }

    fn step(&self, command: RaffleCommand, services: &RaffleServices, supplied: &Supplied) -> Step {
        let now = services.now();
        if let RaffleCommand::Create(create) = command {
            if self.config.is_some() {
                return Err(RaffleError::RaffleAlreadyExists.into());
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
                }
                .into()),
            },
            RaffleCommand::Reserve(reserve) => {
                self.reserve(config, reserve, now, services, supplied)
            }
            RaffleCommand::Release { order_id } => self.release(order_id, now, supplied),
            RaffleCommand::ExpireDueHolds => Ok(self.expire_due_holds(now)),
            RaffleCommand::ExtendHold { order_id, until } => {
                self.extend_hold(config, order_id, until, now, supplied)
            }
            RaffleCommand::RecordPayment(payment) => {
                self.record_payment(config, payment, now, services, supplied)
            }
            RaffleCommand::RecordPaymentFailure(failure) => {
                self.record_failure(failure, now, supplied)
            }
            RaffleCommand::ConfirmManualPayment(manual) => {
                self.confirm_manual(config, manual, now, services, supplied)
            }
            RaffleCommand::Refund(refund) => self.refund(config, refund, now, supplied),
            RaffleCommand::CloseSales => match self.status {
                RaffleStatus::OnSale => Ok(vec![RaffleEvent::SalesClosed { at: now }]),
                RaffleStatus::Closed => Ok(vec![]),
                status => Err(RaffleError::InvalidRaffleState {
                    status,
                    expected: "on_sale".into(),
                }
                .into()),
            },
            RaffleCommand::Draw {
                seed,
                public_entropy,
            } => {
                if self.settled.is_some() {
                    // Every ticket's owner and issue time: the log, folded in full.
                    let full = supplied.log()?;
                    let config = full.config().ok_or(RaffleError::RaffleNotFound)?;
                    return Ok(full.draw(config, seed, public_entropy, now)?);
                }
                Ok(self.draw(config, seed, public_entropy, now)?)
            }
            RaffleCommand::Cancel { reason } => match self.status {
                RaffleStatus::Cancelled => Ok(vec![]),
                RaffleStatus::Drawn => Err(RaffleError::InvalidRaffleState {
                    status: RaffleStatus::Drawn,
                    expected: "not yet drawn".into(),
                }
                .into()),
                _ => Ok(vec![RaffleEvent::RaffleCancelled { reason, at: now }]),
            },
        }
    }

    /// The order's facts: `Ok(None)` if the raffle never had it. A compact raffle reads a
    /// settled order (or one whose digest is merely present) from its own events.
    fn facts(&self, order_id: Uuid, supplied: &Supplied) -> Result<Option<Facts>, Need> {
        if let Some(pos) = self.orders.find(&order_id) {
            let order = self.orders.get(pos);
            if self.settled.is_none() || order.status == OrderStatus::Reserved {
                return Ok(Some(Facts {
                    status: order.status,
                    numbers: self.orders.numbers_vec(pos),
                    reserved_at: order.reserved_at,
                    expires_at: order.expires_at,
                    issued_at: order.issued_at,
                    partial_refunded: self.orders.partial_refunds.get(&pos).copied().unwrap_or(0),
                }));
            }
        }
        let Some(settled) = &self.settled else {
            return Ok(None);
        };
        if !settled.orders.contains(order_digest(&order_id)) {
            return Ok(None);
        }
        let events = supplied.events(&Need::Order(order_id))?;
        Ok(self.settled_details(order_id, events).map(|d| Facts {
            status: d.status,
            numbers: d.numbers,
            reserved_at: d.reserved_at,
            expires_at: d.expires_at,
            issued_at: d.issued_at,
            partial_refunded: d.partial_refunded,
        }))
    }

    /// A settled order's details from its own events, corrected by what they cannot show:
    /// a hold that ended without an event of its own expired (or was released by the
    /// cancellation), and a paid order of a cancelled raffle owes a refund.
    fn settled_details(&self, order_id: Uuid, events: &[RaffleEvent]) -> Option<OrderDetails> {
        let mut details = OrderDetails::fold(events)?;
        let settled = self.settled.as_deref()?;
        match details.status {
            OrderStatus::Reserved if self.orders_live(order_id) => {}
            OrderStatus::Reserved if settled.released_by_cancel.contains(&order_id) => {
                details.status = OrderStatus::Released;
            }
            OrderStatus::Reserved => details.status = OrderStatus::Expired,
            OrderStatus::Paid if self.status == RaffleStatus::Cancelled => {
                details.status = OrderStatus::RefundRequired;
            }
            _ => {}
        }
        Some(details)
    }

    fn orders_live(&self, order_id: Uuid) -> bool {
        self.orders
            .find(&order_id)
            .is_some_and(|pos| self.orders.get(pos).status == OrderStatus::Reserved)
    }

    fn order_exists(&self, order_id: Uuid, supplied: &Supplied) -> Result<bool, Need> {
        if self.orders.find(&order_id).is_some() {
            return Ok(true);
        }
        Ok(self.facts(order_id, supplied)?.is_some())
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
        supplied: &Supplied,
    ) -> Step {
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            }
            .into());
        }
        if self.order_exists(order_id, supplied)? {
            return Err(RaffleError::OrderAlreadyExists { order_id }.into());
        }
        let requested = match &selection {
            Selection::Numbers(numbers) => numbers.len() as u32,
            Selection::Random(quantity) => *quantity,
        };
        if requested == 0 {
            return Err(RaffleError::InvalidQuantity.into());
        }
        if requested > config.max_tickets_per_order {
            return Err(RaffleError::LimitExceeded {
                kind: LimitKind::PerOrder,
                limit: config.max_tickets_per_order,
                requested,
                held: 0,
            }
            .into());
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
                }
                .into());
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
                    return Err(RaffleError::InvalidTicketNumber { numbers: outside }.into());
                }
                numbers.sort_unstable();
                let repeated: Vec<u32> = numbers
                    .windows(2)
                    .filter(|w| w[0] == w[1])
                    .map(|w| w[0])
                    .collect();
                if !repeated.is_empty() {
                    return Err(RaffleError::DuplicateTicketNumber { numbers: repeated }.into());
                }
                let taken = self.tickets.taken(&numbers);
                if !taken.is_empty() {
                    return Err(RaffleError::TicketsUnavailable { numbers: taken }.into());
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

    fn release(&self, order_id: Uuid, now: DateTime<Utc>, supplied: &Supplied) -> Step {
        let facts = self
            .facts(order_id, supplied)?
            .ok_or(RaffleError::OrderNotFound { order_id })?;
        match facts.status {
            OrderStatus::Reserved => Ok(vec![RaffleEvent::ReservationReleased {
                order_id,
                numbers: facts.numbers,
                at: now,
            }]),
            OrderStatus::Released => Ok(vec![]),
            status => Err(RaffleError::InvalidOrderState { order_id, status }.into()),
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
        supplied: &Supplied,
    ) -> Step {
        let order = self
            .facts(order_id, supplied)?
            .ok_or(RaffleError::OrderNotFound { order_id })?;
        match order.status {
            OrderStatus::Reserved => {}
            // A pending notice that arrives after the money did changes nothing.
            OrderStatus::Paid => return Ok(vec![]),
            status => return Err(RaffleError::InvalidOrderState { order_id, status }.into()),
        }
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            }
            .into());
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

    /// Whether `payment_id` was recorded before, and if so whether first for this order
    /// (`Some(true)`: a repeat, nothing to do) or another one (`Some(false)`: flag it).
    fn payment_seen(
        &self,
        order_id: Uuid,
        payment_id: &str,
        supplied: &Supplied,
    ) -> Result<Option<bool>, Need> {
        let digest = digest64(payment_id);
        let Some(settled) = &self.settled else {
            let pos = self.orders.find(&order_id).unwrap_or(NO_ORDER);
            return Ok(self.orders.payments.get(&digest).map(|&seen| seen == pos));
        };
        if !settled.payments.contains(digest) {
            return Ok(None);
        }
        // The digest is only a hint: the log says whether, and where first. Mirrors the full
        // raffle's rule: a repeat when first recorded for this order, or for an order the
        // raffle did not have then while it does not have this one now.
        let known_now = self.facts(order_id, supplied)?.is_some();
        if let Some(known_then) =
            first_recorded(supplied.events(&Need::Order(order_id))?, payment_id)
        {
            return Ok(Some(known_then || !known_now));
        }
        let elsewhere = supplied.events(&Need::Payment(payment_id.to_owned()))?;
        let Some(RaffleEvent::PaymentRecorded {
            order_id: first, ..
        }) = elsewhere.first()
        else {
            return Ok(None);
        };
        let known_then =
            first_recorded(supplied.events(&Need::Order(*first))?, payment_id).unwrap_or(true);
        Ok(Some(!known_then && !known_now))
    }

    fn record_payment(
        &self,
        config: &RaffleConfig,
        payment: ProviderPayment,
        now: DateTime<Utc>,
        services: &RaffleServices,
        supplied: &Supplied,
    ) -> Step {
        let order_id = payment.order_id;
        let seen = self.payment_seen(order_id, &payment.payment_id, supplied)?;
        if seen == Some(true) {
            return Ok(vec![]);
        }
        let facts = self.facts(order_id, supplied)?;
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
        if seen == Some(false) {
            // The same payment id on another order: a provider metadata mix-up (or a 64-bit
            // digest collision in a full raffle). Keep the money visible rather than guess.
            let flagged = self.flag(
                config,
                order_id,
                facts.as_ref(),
                &payment.payment_id,
                "payment_id_reused",
                now,
            );
            return Ok(vec![recorded, flagged]);
        }
        let Some(order) = facts else {
            return Ok(vec![
                recorded,
                refund(RefundReason::UnknownOrder, payment.amount_minor),
            ]);
        };
        let outcome = match order.status {
            OrderStatus::Paid => refund(RefundReason::AlreadyPaid, payment.amount_minor),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                refund(RefundReason::OrderNotPayable, payment.amount_minor)
            }
            _ if !matches!(
                (config.price_for(order.len()), Money::new(payment.amount_minor, payment.currency)),
                (Ok(due), Ok(paid)) if due == paid
            ) =>
            {
                self.flag(
                    config,
                    order_id,
                    Some(&order),
                    &payment.payment_id,
                    "amount_mismatch",
                    now,
                )
            }
            _ if self.status != RaffleStatus::OnSale => {
                refund(RefundReason::SalesClosed, payment.amount_minor)
            }
            _ => self
                .issue(config, order_id, order, now, services)
                .unwrap_or_else(|reason| refund(reason, payment.amount_minor)),
        };
        Ok(vec![recorded, outcome])
    }

    fn flag(
        &self,
        config: &RaffleConfig,
        order_id: Uuid,
        order: Option<&Facts>,
        payment_id: &str,
        reason: &str,
        at: DateTime<Utc>,
    ) -> RaffleEvent {
        RaffleEvent::PaymentFlagged {
            order_id,
            payment_id: payment_id.to_owned(),
            reason: reason.to_owned(),
            expected_amount_minor: order.map_or(0, |o| {
                config.price_for(o.len()).map_or(i64::MAX, Money::minor)
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
        order_id: Uuid,
        order: Facts,
        now: DateTime<Utc>,
        services: &RaffleServices,
    ) -> Result<RaffleEvent, RefundReason> {
        let issued = |numbers, late, replaced_numbers| RaffleEvent::TicketsIssued {
            order_id,
            numbers,
            late,
            replaced_numbers,
            at: now,
        };
        if order.status == OrderStatus::Reserved {
            return Ok(issued(order.numbers, false, vec![]));
        }
        if self.tickets.taken(&order.numbers).is_empty() {
            return Ok(issued(order.numbers, true, vec![]));
        }
        if config.late_payment_policy == LatePaymentPolicy::Substitute {
            if let Ok(substitutes) = self
                .tickets
                .pick_random(order.len(), services.rng().as_mut())
            {
                return Ok(issued(substitutes, true, order.numbers));
            }
        }
        Err(RefundReason::TicketsTaken)
    }

    fn record_failure(
        &self,
        failure: RecordPaymentFailure,
        now: DateTime<Utc>,
        supplied: &Supplied,
    ) -> Step {
        let order_id = failure.order_id;
        if self.facts(order_id, supplied)?.is_none() {
            return Err(RaffleError::OrderNotFound { order_id }.into());
        }
        // A provider retries a delivery it believes lost: the same failure, once.
        let key = failure_key(&failure.provider, &failure.provider_event_id);
        let seen = match &self.settled {
            None => self.orders.payments.contains_key(&key),
            Some(settled) if settled.payments.contains(key) => {
                let need = Need::Failure {
                    provider: failure.provider.clone(),
                    provider_event_id: failure.provider_event_id.clone(),
                };
                let here = supplied
                    .events(&Need::Order(order_id))?
                    .iter()
                    .any(|e| need.matches(e));
                here || !supplied.events(&need)?.is_empty()
            }
            Some(_) => false,
        };
        if seen {
            return Ok(vec![]);
        }
        Ok(vec![RaffleEvent::PaymentFailed {
            order_id,
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
        supplied: &Supplied,
    ) -> Step {
        let order_id = manual.order_id;
        let order = self
            .facts(order_id, supplied)?
            .ok_or(RaffleError::OrderNotFound { order_id })?;
        match order.status {
            OrderStatus::Paid => return Ok(vec![]),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                return Err(RaffleError::InvalidOrderState {
                    order_id,
                    status: order.status,
                }
                .into())
            }
            _ => {}
        }
        if self.status != RaffleStatus::OnSale {
            return Err(RaffleError::SalesClosed {
                status: self.status,
            }
            .into());
        }
        let amount_minor = config.price_for(order.len())?.minor();
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
            .issue(config, order_id, order, now, services)
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

    fn refund(
        &self,
        config: &RaffleConfig,
        refund: RefundOrder,
        now: DateTime<Utc>,
        supplied: &Supplied,
    ) -> Step {
        let order_id = refund.order_id;
        let order = self
            .facts(order_id, supplied)?
            .ok_or(RaffleError::OrderNotFound { order_id })?;
        match order.status {
            OrderStatus::Paid | OrderStatus::RefundRequired => {}
            OrderStatus::Refunded => return Ok(vec![]),
            status => return Err(RaffleError::InvalidOrderState { order_id, status }.into()),
        }
        let amount_minor = config.price_for(order.len())?.minor();
        match refund.amount_refunded_minor {
            Some(refunded) if refunded <= 0 => Err(RaffleError::InvalidRefundAmount.into()),
            Some(refunded) if refunded < amount_minor => {
                if refunded <= order.partial_refunded {
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
                returned_to_pool: order.status == OrderStatus::Paid
                    && self.status == RaffleStatus::OnSale,
                numbers: order.numbers,
                amount_minor,
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
                // A raffle compacted before its creation (an engine that keeps every raffle
                // compact) stays so, unless a per-buyer limit needs every order's buyer.
                if self.settled.is_some() {
                    self.settled = config.max_tickets_per_buyer.is_none().then(Box::default);
                }
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
                if let Some(settled) = &mut self.settled {
                    settled.orders.insert(order_digest(order_id));
                }
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
                if let Some(settled) = &mut self.settled {
                    settled.payments.insert(digest64(&payment.payment_id));
                    return;
                }
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
                match self.record_pos(order_id) {
                    Some(pos) => {
                        if !replaced_numbers.is_empty() {
                            self.orders.replace_numbers(pos, numbers);
                        }
                        self.tickets.issue(numbers);
                        self.orders.set_issued_at(pos, to_secs_floor(*at));
                        self.orders.set_status(pos, OrderStatus::Paid);
                    }
                    // A compact raffle's late payment: the order keeps no record to move.
                    None if self.settled.is_some() => self.tickets.issue(numbers),
                    None => {}
                }
            }
            RaffleEvent::RefundRequired {
                order_id, reason, ..
            } => {
                let Some(pos) = self.record_pos(order_id) else {
                    // A compact raffle's settled order: one not paid now owes a refund. Only
                    // these reasons are given for an order that is neither paid nor refunded.
                    if let Some(settled) = &mut self.settled {
                        if matches!(
                            reason,
                            RefundReason::TicketsTaken | RefundReason::SalesClosed
                        ) {
                            settled.refund_required.insert(*order_id);
                        }
                    }
                    return;
                };
                match self.orders.get(pos).status {
                    OrderStatus::Reserved => {
                        self.tickets.release(self.orders.numbers_of(pos));
                        self.orders.set_status(pos, OrderStatus::RefundRequired);
                        if let Some(settled) = &mut self.settled {
                            settled.refund_required.insert(*order_id);
                        }
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
                if let Some(pos) = self.record_pos(order_id) {
                    self.orders
                        .partial_refunds
                        .insert(pos, *amount_refunded_minor);
                }
            }
            RaffleEvent::OrderRefunded {
                order_id, numbers, ..
            } => {
                let Some(pos) = self.record_pos(order_id) else {
                    // A compact raffle's settled order was paid unless it owed a refund
                    // already (paid ones do too once the raffle is cancelled).
                    if let Some(settled) = &mut self.settled {
                        let owed = settled.refund_required.remove(order_id);
                        if !owed && self.status != RaffleStatus::Cancelled {
                            self.tickets.return_issued(numbers.iter().copied());
                        }
                    }
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
                if let Some(settled) = &mut self.settled {
                    // Every issued number belongs to a paid order: all go back at once.
                    let issued = std::mem::take(&mut self.tickets.issued);
                    self.tickets.free |= issued;
                    for pos in 0..self.orders.len() as u32 {
                        if self.orders.get(pos).status == OrderStatus::Reserved {
                            settled.released_by_cancel.insert(self.orders.get(pos).id);
                            self.tickets.release(self.orders.numbers_of(pos));
                            self.orders.set_status(pos, OrderStatus::Released);
                        }
                    }
                    return;
                }
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
                if let Some(settled) = &mut self.settled {
                    settled
                        .payments
                        .insert(failure_key(provider, provider_event_id));
                    return;
                }
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
        if let Some(pos) = self.record_pos(&order_id) {
            self.orders.set_status(pos, status);
        }
    }

    /// The order's resident record: any order's in a full raffle, a live hold's in a compact
    /// one (the records of settled orders linger there until the next compaction, unused).
    fn record_pos(&self, order_id: &Uuid) -> Option<u32> {
        let pos = self.orders.find(order_id)?;
        (self.settled.is_none() || self.orders.get(pos).status == OrderStatus::Reserved)
            .then_some(pos)
    }

    // ----- compaction (decision 0022) -----

    /// Keeps settled orders as digests from now on, and drops the records of orders settled
    /// since the last call. `false` (nothing changes) for a raffle with a per-buyer limit:
    /// that needs every live order's buyer, which only the full form keeps.
    pub fn compact(&mut self) -> bool {
        if self.orders.buyers.is_some() {
            return false;
        }
        let cancelled = self.status == RaffleStatus::Cancelled;
        let settled = self.settled.get_or_insert_with(|| {
            let mut settled = Settled::default();
            let mut digests = Vec::with_capacity(self.orders.len());
            for order in self.orders.orders.iter() {
                digests.push(order_digest(&order.id));
                match order.status {
                    OrderStatus::RefundRequired if !cancelled => {
                        settled.refund_required.insert(order.id);
                    }
                    OrderStatus::Released if cancelled => {
                        settled.released_by_cancel.insert(order.id);
                    }
                    _ => {}
                }
            }
            settled.orders = DigestSet::from_unsorted(digests);
            settled.payments =
                DigestSet::from_unsorted(self.orders.payments.keys().copied().collect());
            Box::new(settled)
        });
        settled.orders.merge();
        settled.payments.merge();
        self.orders = self.orders.live_only();
        true
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

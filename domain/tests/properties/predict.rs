//! What the reference model expects each command to answer.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use proptest::test_runner::TestCaseError;
use tombola_domain::{
    draw, ConfirmManualPayment, ExpiredHold, LatePaymentPolicy, LimitKind, OrderStatus, Payment,
    ProviderPayment, RaffleCommand, RaffleError, RaffleEvent, RaffleStatus, RefundOrder,
    RefundReason, Reserve, Selection, Winner,
};
use uuid::Uuid;

use crate::common::SEED;
use crate::model::{fail, Model, ModelOrder};
use crate::{Outcome, HOLD, MAX_HOLD};

impl Model {
    // ----- predictions -----

    pub(crate) fn predict(
        &self,
        command: &RaffleCommand,
        now: DateTime<Utc>,
        actual: &Outcome,
    ) -> Result<Outcome, TestCaseError> {
        use RaffleCommand as C;
        Ok(match command {
            C::Create(_) => Err(RaffleError::RaffleAlreadyExists),
            C::OpenSales => match self.status {
                RaffleStatus::Draft => Ok(vec![RaffleEvent::SalesOpened { at: now }]),
                RaffleStatus::OnSale => Ok(vec![]),
                status => Err(RaffleError::InvalidRaffleState {
                    status,
                    expected: "draft".into(),
                }),
            },
            C::Reserve(reserve) => self.predict_reserve(reserve, now, actual)?,
            C::Release { order_id } => match self.orders.get(order_id) {
                None => Err(RaffleError::OrderNotFound {
                    order_id: *order_id,
                }),
                Some(o) if o.status == OrderStatus::Reserved => {
                    Ok(vec![RaffleEvent::ReservationReleased {
                        order_id: *order_id,
                        numbers: o.numbers.clone(),
                        at: now,
                    }])
                }
                Some(o) if o.status == OrderStatus::Released => Ok(vec![]),
                Some(o) => Err(RaffleError::InvalidOrderState {
                    order_id: *order_id,
                    status: o.status,
                }),
            },
            C::ExpireDueHolds => {
                let mut due: Vec<(&Uuid, &ModelOrder)> = self
                    .orders
                    .iter()
                    .filter(|(_, o)| o.status == OrderStatus::Reserved && o.expires_at <= now)
                    .collect();
                due.sort_by_key(|(_, o)| (o.expires_at, o.seq));
                if due.is_empty() {
                    Ok(vec![])
                } else {
                    Ok(vec![RaffleEvent::HoldsExpired {
                        holds: due
                            .into_iter()
                            .map(|(id, o)| ExpiredHold {
                                order_id: *id,
                                numbers: o.numbers.clone(),
                            })
                            .collect(),
                        at: now,
                    }])
                }
            }
            C::ExtendHold { order_id, until } => match self.orders.get(order_id) {
                None => Err(RaffleError::OrderNotFound {
                    order_id: *order_id,
                }),
                Some(o) if o.status == OrderStatus::Paid => Ok(vec![]),
                Some(o) if o.status != OrderStatus::Reserved => {
                    Err(RaffleError::InvalidOrderState {
                        order_id: *order_id,
                        status: o.status,
                    })
                }
                Some(_) if self.status != RaffleStatus::OnSale => Err(RaffleError::SalesClosed {
                    status: self.status,
                }),
                Some(o) => {
                    let cap = o.reserved_at + Duration::seconds(MAX_HOLD);
                    let expires_at = (*until).min(cap);
                    if expires_at <= o.expires_at {
                        Ok(vec![])
                    } else {
                        Ok(vec![RaffleEvent::HoldExtended {
                            order_id: *order_id,
                            expires_at,
                            at: now,
                        }])
                    }
                }
            },
            C::RecordPayment(p) => self.predict_payment(p, now, actual)?,
            C::RecordPaymentFailure(f) => {
                if self.orders.contains_key(&f.order_id) {
                    Ok(vec![RaffleEvent::PaymentFailed {
                        order_id: f.order_id,
                        provider: f.provider.clone(),
                        payment_id: f.payment_id.clone(),
                        provider_event_id: f.provider_event_id.clone(),
                        reason: f.reason.clone(),
                        at: now,
                    }])
                } else {
                    Err(RaffleError::OrderNotFound {
                        order_id: f.order_id,
                    })
                }
            }
            C::ConfirmManualPayment(m) => self.predict_manual(m, now, actual)?,
            C::Refund(r) => self.predict_refund(r, now),
            C::CloseSales => match self.status {
                RaffleStatus::OnSale => Ok(vec![RaffleEvent::SalesClosed { at: now }]),
                RaffleStatus::Closed => Ok(vec![]),
                status => Err(RaffleError::InvalidRaffleState {
                    status,
                    expected: "on_sale".into(),
                }),
            },
            C::Draw {
                seed,
                public_entropy,
            } => self.predict_draw(seed, public_entropy, now),
            C::Cancel { reason } => match self.status {
                RaffleStatus::Cancelled => Ok(vec![]),
                RaffleStatus::Drawn => Err(RaffleError::InvalidRaffleState {
                    status: RaffleStatus::Drawn,
                    expected: "not yet drawn".into(),
                }),
                _ => Ok(vec![RaffleEvent::RaffleCancelled {
                    reason: reason.clone(),
                    at: now,
                }]),
            },
        })
    }

    fn predict_reserve(
        &self,
        reserve: &Reserve,
        now: DateTime<Utc>,
        actual: &Outcome,
    ) -> Result<Outcome, TestCaseError> {
        let cfg = &self.cfg;
        if self.status != RaffleStatus::OnSale {
            return Ok(Err(RaffleError::SalesClosed {
                status: self.status,
            }));
        }
        if self.orders.contains_key(&reserve.order_id) {
            return Ok(Err(RaffleError::OrderAlreadyExists {
                order_id: reserve.order_id,
            }));
        }
        let requested = match &reserve.selection {
            Selection::Numbers(numbers) => numbers.len() as u32,
            Selection::Random(quantity) => *quantity,
        };
        if requested == 0 {
            return Ok(Err(RaffleError::InvalidQuantity));
        }
        if requested > cfg.max_tickets_per_order {
            return Ok(Err(RaffleError::LimitExceeded {
                kind: LimitKind::PerOrder,
                limit: cfg.max_tickets_per_order,
                requested,
                held: 0,
            }));
        }
        if let Some(limit) = cfg.max_tickets_per_buyer {
            let held = self.live_tickets_of(&reserve.buyer.email().as_str().to_lowercase());
            if held + requested > limit {
                return Ok(Err(RaffleError::LimitExceeded {
                    kind: LimitKind::PerBuyer,
                    limit,
                    requested,
                    held,
                }));
            }
        }
        let numbers = match &reserve.selection {
            Selection::Numbers(numbers) => {
                let outside: Vec<u32> = numbers
                    .iter()
                    .copied()
                    .filter(|n| !self.in_range(*n))
                    .collect();
                if !outside.is_empty() {
                    return Ok(Err(RaffleError::InvalidTicketNumber { numbers: outside }));
                }
                let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
                for n in numbers {
                    *counts.entry(*n).or_default() += 1;
                }
                let repeated: Vec<u32> = counts
                    .iter()
                    .flat_map(|(n, c)| std::iter::repeat_n(*n, c - 1))
                    .collect();
                if !repeated.is_empty() {
                    return Ok(Err(RaffleError::DuplicateTicketNumber {
                        numbers: repeated,
                    }));
                }
                let taken: Vec<u32> = counts
                    .keys()
                    .copied()
                    .filter(|n| !self.free.contains(n))
                    .collect();
                if !taken.is_empty() {
                    return Ok(Err(RaffleError::TicketsUnavailable { numbers: taken }));
                }
                counts.into_keys().collect()
            }
            Selection::Random(quantity) => {
                if *quantity as usize > self.free.len() {
                    return Ok(Err(RaffleError::NotEnoughTickets {
                        requested: *quantity,
                        available: self.free.len() as u32,
                    }));
                }
                let Ok([RaffleEvent::TicketsReserved { numbers, .. }]) = actual.as_deref() else {
                    return Err(fail(format!(
                        "expected one TicketsReserved, got {actual:?}"
                    )));
                };
                self.check_random_pick(numbers, *quantity as usize)?;
                numbers.clone()
            }
        };
        Ok(Ok(vec![RaffleEvent::TicketsReserved {
            order_id: reserve.order_id,
            buyer: reserve.buyer.clone(),
            amount_minor: self.price(numbers.len()),
            currency: cfg.currency,
            numbers,
            at: now,
            expires_at: now + Duration::seconds(HOLD),
        }]))
    }

    /// Issuing a payable order: `Err` is why the money must go back.
    fn predict_issue(
        &self,
        order_id: Uuid,
        now: DateTime<Utc>,
        actual: &Outcome,
    ) -> Result<Result<RaffleEvent, RefundReason>, TestCaseError> {
        let o = &self.orders[&order_id];
        let issued = |numbers: Vec<u32>, late, replaced_numbers| RaffleEvent::TicketsIssued {
            order_id,
            numbers,
            late,
            replaced_numbers,
            at: now,
        };
        if o.status == OrderStatus::Reserved {
            return Ok(Ok(issued(o.numbers.clone(), false, vec![])));
        }
        if o.numbers.iter().all(|n| self.free.contains(n)) {
            return Ok(Ok(issued(o.numbers.clone(), true, vec![])));
        }
        let substitute = self.cfg.late_payment_policy == LatePaymentPolicy::Substitute;
        if substitute && self.free.len() >= o.numbers.len() {
            let picked = actual.as_ref().ok().and_then(|events| {
                events.iter().find_map(|e| match e {
                    RaffleEvent::TicketsIssued { numbers, .. } => Some(numbers.clone()),
                    _ => None,
                })
            });
            let Some(picked) = picked else {
                return Err(fail(format!("expected substitutes, got {actual:?}")));
            };
            self.check_random_pick(&picked, o.numbers.len())?;
            return Ok(Ok(issued(picked, true, o.numbers.clone())));
        }
        Ok(Err(RefundReason::TicketsTaken))
    }

    fn flagged(
        &self,
        order_id: Uuid,
        payment_id: &str,
        reason: &str,
        now: DateTime<Utc>,
    ) -> RaffleEvent {
        RaffleEvent::PaymentFlagged {
            order_id,
            payment_id: payment_id.into(),
            reason: reason.into(),
            expected_amount_minor: self
                .orders
                .get(&order_id)
                .map_or(0, |o| self.price(o.numbers.len())),
            expected_currency: self.cfg.currency,
            at: now,
        }
    }

    fn predict_payment(
        &self,
        p: &ProviderPayment,
        now: DateTime<Utc>,
        actual: &Outcome,
    ) -> Result<Outcome, TestCaseError> {
        let known = self.orders.contains_key(&p.order_id).then_some(p.order_id);
        let recorded = RaffleEvent::PaymentRecorded {
            order_id: p.order_id,
            payment: Payment {
                provider: p.provider.clone(),
                payment_id: p.payment_id.clone(),
                provider_event_id: p.provider_event_id.clone(),
                amount_minor: p.amount_minor,
                currency: p.currency,
                method: p.method.clone(),
            },
            at: now,
        };
        let refund = |reason| RaffleEvent::RefundRequired {
            order_id: p.order_id,
            payment_id: Some(p.payment_id.clone()),
            amount_minor: p.amount_minor,
            currency: p.currency,
            reason,
            at: now,
        };
        if let Some(first) = self.payments.get(&p.payment_id) {
            if *first == known {
                return Ok(Ok(vec![]));
            }
            let flagged = self.flagged(p.order_id, &p.payment_id, "payment_id_reused", now);
            return Ok(Ok(vec![recorded, flagged]));
        }
        let Some(order_id) = known else {
            return Ok(Ok(vec![recorded, refund(RefundReason::UnknownOrder)]));
        };
        let o = &self.orders[&order_id];
        let outcome = match o.status {
            OrderStatus::Paid => refund(RefundReason::AlreadyPaid),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                refund(RefundReason::OrderNotPayable)
            }
            _ if p.amount_minor != self.price(o.numbers.len())
                || p.currency != self.cfg.currency =>
            {
                self.flagged(order_id, &p.payment_id, "amount_mismatch", now)
            }
            _ if self.status != RaffleStatus::OnSale => refund(RefundReason::SalesClosed),
            _ => self
                .predict_issue(order_id, now, actual)?
                .unwrap_or_else(refund),
        };
        Ok(Ok(vec![recorded, outcome]))
    }

    fn predict_manual(
        &self,
        m: &ConfirmManualPayment,
        now: DateTime<Utc>,
        actual: &Outcome,
    ) -> Result<Outcome, TestCaseError> {
        let Some(o) = self.orders.get(&m.order_id) else {
            return Ok(Err(RaffleError::OrderNotFound {
                order_id: m.order_id,
            }));
        };
        match o.status {
            OrderStatus::Paid => return Ok(Ok(vec![])),
            OrderStatus::Refunded | OrderStatus::RefundRequired => {
                return Ok(Err(RaffleError::InvalidOrderState {
                    order_id: m.order_id,
                    status: o.status,
                }))
            }
            _ => {}
        }
        if self.status != RaffleStatus::OnSale {
            return Ok(Err(RaffleError::SalesClosed {
                status: self.status,
            }));
        }
        let amount_minor = self.price(o.numbers.len());
        let confirmed = RaffleEvent::ManualPaymentConfirmed {
            order_id: m.order_id,
            method: m.method.clone(),
            reference: m.reference.clone(),
            confirmed_by: m.confirmed_by.clone(),
            amount_minor,
            currency: self.cfg.currency,
            at: now,
        };
        let outcome = self
            .predict_issue(m.order_id, now, actual)?
            .unwrap_or_else(|reason| RaffleEvent::RefundRequired {
                order_id: m.order_id,
                payment_id: None,
                amount_minor,
                currency: self.cfg.currency,
                reason,
                at: now,
            });
        Ok(Ok(vec![confirmed, outcome]))
    }

    fn predict_refund(&self, r: &RefundOrder, now: DateTime<Utc>) -> Outcome {
        let Some(o) = self.orders.get(&r.order_id) else {
            return Err(RaffleError::OrderNotFound {
                order_id: r.order_id,
            });
        };
        match o.status {
            OrderStatus::Paid | OrderStatus::RefundRequired => {}
            OrderStatus::Refunded => return Ok(vec![]),
            status => {
                return Err(RaffleError::InvalidOrderState {
                    order_id: r.order_id,
                    status,
                })
            }
        }
        let amount_minor = self.price(o.numbers.len());
        match r.amount_refunded_minor {
            Some(x) if x <= 0 => Err(RaffleError::InvalidRefundAmount),
            Some(x) if x < amount_minor => {
                if x <= self.partial_refunds.get(&r.order_id).copied().unwrap_or(0) {
                    Ok(vec![])
                } else {
                    Ok(vec![RaffleEvent::PaymentPartiallyRefunded {
                        order_id: r.order_id,
                        amount_refunded_minor: x,
                        refund_id: r.refund_id.clone(),
                        at: now,
                    }])
                }
            }
            _ => Ok(vec![RaffleEvent::OrderRefunded {
                order_id: r.order_id,
                numbers: o.numbers.clone(),
                amount_minor,
                returned_to_pool: o.status == OrderStatus::Paid
                    && self.status == RaffleStatus::OnSale,
                reason: r.reason.clone(),
                refund_id: r.refund_id.clone(),
                at: now,
            }]),
        }
    }

    fn predict_draw(&self, seed: &str, entropy: &str, now: DateTime<Utc>) -> Outcome {
        if self.status != RaffleStatus::Closed {
            return Err(RaffleError::InvalidRaffleState {
                status: self.status,
                expected: "closed".into(),
            });
        }
        if seed != SEED {
            return Err(RaffleError::DrawSeedMismatch);
        }
        let (issued, owners) = self.issued_tickets();
        let prizes = &self.cfg.prizes;
        let winners = draw::draw_winners(seed, entropy, prizes, &issued)
            .into_iter()
            .enumerate()
            .filter_map(|(i, number)| {
                let number = number?;
                Some(Winner {
                    prize_index: i as u32,
                    prize: prizes[i].name.clone(),
                    number,
                    order_id: owners[&number],
                })
            })
            .collect();
        Ok(vec![RaffleEvent::WinnersDrawn {
            seed: seed.into(),
            public_entropy: entropy.into(),
            winners,
            at: now,
        }])
    }
}

//! What a provider's event becomes: the raffle command it asks for, and one word for the
//! inbox row saying what that command led to.

use tombola_domain::{
    ProviderPayment, RaffleCommand, RaffleEvent, RecordPaymentFailure, RefundOrder,
};

use crate::payments::provider::{PaymentAction, ProviderEvent};

pub(super) fn command_for(
    provider: &str,
    event: &ProviderEvent,
    order_id: uuid::Uuid,
) -> RaffleCommand {
    match &event.action {
        PaymentAction::Succeeded {
            payment_id,
            amount_minor,
            currency,
            method,
        } => RaffleCommand::RecordPayment(ProviderPayment {
            order_id,
            provider: provider.to_owned(),
            payment_id: payment_id.clone(),
            provider_event_id: event.event_id.clone(),
            amount_minor: *amount_minor,
            currency: *currency,
            method: method.clone(),
        }),
        PaymentAction::Failed { payment_id, reason } => {
            RaffleCommand::RecordPaymentFailure(RecordPaymentFailure {
                order_id,
                provider: provider.to_owned(),
                payment_id: payment_id.clone(),
                provider_event_id: event.event_id.clone(),
                reason: reason.clone(),
            })
        }
        PaymentAction::Pending { until, .. } => RaffleCommand::ExtendHold {
            order_id,
            until: *until,
        },
        PaymentAction::Refunded {
            refund_id,
            amount_refunded_minor,
            ..
        } => RaffleCommand::Refund(RefundOrder {
            order_id,
            amount_refunded_minor: Some(*amount_refunded_minor),
            reason: format!("{provider} refund"),
            refund_id: Some(refund_id.clone()),
        }),
        PaymentAction::Ignored => unreachable!("ignored deliveries carry no payment id"),
    }
}

/// One word for the inbox row: what the command led to.
pub(super) fn summarize<'a>(events: impl Iterator<Item = &'a RaffleEvent>) -> String {
    let mut outcome = "duplicate";
    for event in events {
        outcome = match event {
            RaffleEvent::TicketsIssued { late: true, .. } => "tickets_issued_late",
            RaffleEvent::TicketsIssued { .. } => "tickets_issued",
            RaffleEvent::PaymentFlagged { .. } => "payment_flagged",
            RaffleEvent::RefundRequired { .. } => "refund_required",
            RaffleEvent::PaymentFailed { .. } => "failure_recorded",
            RaffleEvent::HoldExtended { .. } => "hold_extended",
            RaffleEvent::OrderRefunded { .. } => "refunded",
            RaffleEvent::PaymentPartiallyRefunded { .. } => "partially_refunded",
            _ => outcome,
        };
    }
    outcome.to_owned()
}

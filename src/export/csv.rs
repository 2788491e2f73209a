//! `tickets.csv` and `orders.csv` for spreadsheets, streamed from the read models with
//! `COPY … TO STDOUT (FORMAT csv)`: RFC 4180 quoting by PostgreSQL, a UTF-8 BOM and a header
//! line in Spanish or English first, numbers zero-padded as the raffle shows them, times in
//! the raffle's time zone with their offset, and every buyer- or organizer-supplied text
//! neutralised for spreadsheets (OWASP: a value starting with `=`, `+`, `-`, `@`, tab or
//! carriage return gets a leading `'`, so it is shown as text and never run as a formula).
//!
//! The search text reaches the statement only as a bound parameter (see the module above);
//! everything else written into the `COPY` text has a checked type (see [`statement`]).

use std::fmt::Write as _;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Serialize;
use sqlx::postgres::PgConnectOptions;
use tombola_domain::RaffleConfig;
use tombola_projections::csv;
use tombola_projections::models::{
    orders::TABLE as ORDERS, stats::RAFFLE_STATS, tickets::TABLE as TICKETS,
};
use uuid::Uuid;

use super::{copy_out_with, Decoding, ExportStream};

/// What a CSV export lists: one row per held or sold ticket, or one row per order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    Tickets,
    Orders,
}

impl Dataset {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tickets => "tickets",
            Self::Orders => "orders",
        }
    }

    /// The statuses a row can have, as the read models store them.
    pub fn statuses(self) -> &'static [&'static str] {
        match self {
            Self::Tickets => &["held", "sold"],
            Self::Orders => &[
                "reserved",
                "paid",
                "expired",
                "released",
                "refund_required",
                "refunded",
            ],
        }
    }

    fn header(self, lang: Lang) -> &'static [&'static str] {
        match (self, lang) {
            (Self::Tickets, Lang::En) => &[
                "Number",
                "Status",
                "Order",
                "Buyer name",
                "Phone",
                "Email",
                "Purchased at",
                "Order amount",
                "Currency",
                "Payment method",
                "Payment reference",
            ],
            (Self::Tickets, Lang::Es) => &[
                "Número",
                "Estado",
                "Pedido",
                "Nombre",
                "Teléfono",
                "Correo electrónico",
                "Fecha de compra",
                "Importe del pedido",
                "Moneda",
                "Método de pago",
                "Referencia de pago",
            ],
            (Self::Orders, Lang::En) => &[
                "Order",
                "Status",
                "Buyer name",
                "Phone",
                "Email",
                "Numbers",
                "Tickets",
                "Amount",
                "Currency",
                "Payment method",
                "Payment reference",
                "Reserved at",
                "Hold expires at",
                "Paid at",
                "Refunded at",
                "Amount refunded",
                "Late payment",
                "Refund required",
                "Receipt",
            ],
            (Self::Orders, Lang::Es) => &[
                "Pedido",
                "Estado",
                "Nombre",
                "Teléfono",
                "Correo electrónico",
                "Números",
                "Boletos",
                "Importe",
                "Moneda",
                "Método de pago",
                "Referencia de pago",
                "Fecha de apartado",
                "Apartado vence",
                "Fecha de pago",
                "Fecha de reembolso",
                "Importe reembolsado",
                "Pago tardío",
                "Reembolso pendiente",
                "Recibo",
            ],
        }
    }
}

/// The header's language. Spanish is the default for MXN raffles, English otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lang {
    Es,
    En,
}

impl Lang {
    pub fn parse(text: Option<&str>, config: &RaffleConfig) -> Result<Self, &'static str> {
        match text {
            None if config.currency.as_str() == "MXN" => Ok(Self::Es),
            None => Ok(Self::En),
            Some("es") => Ok(Self::Es),
            Some("en") => Ok(Self::En),
            Some(_) => Err("must be es or en"),
        }
    }
}

/// Which rows: statuses (any if empty), a half-open time range (tickets: the time of the
/// hold or the sale; orders: the reservation), and a case-insensitive substring of the
/// buyer's name, e-mail, phone or the payment reference.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CsvFilter {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub q: Option<String>,
}

/// A filter value that cannot be used: `(field, reason)`.
pub type InvalidFilter = (&'static str, String);

/// The longest search text accepted.
pub const MAX_QUERY_CHARS: usize = 200;

impl CsvFilter {
    /// Parses the filters as given over HTTP or the command line.
    pub fn parse(
        dataset: Dataset,
        status: Option<&str>,
        since: Option<&str>,
        until: Option<&str>,
        q: Option<&str>,
    ) -> Result<Self, InvalidFilter> {
        let mut statuses = Vec::new();
        for status in status.into_iter().flat_map(|s| s.split(',')) {
            let status = status.trim();
            if status.is_empty() {
                continue;
            }
            if !dataset.statuses().contains(&status) {
                return Err((
                    "status",
                    format!("must be one or more of {}", dataset.statuses().join(", ")),
                ));
            }
            if !statuses.iter().any(|s| s == status) {
                statuses.push(status.to_owned());
            }
        }
        let time = |field: &'static str, text: Option<&str>| {
            text.map(str::trim)
                .filter(|t| !t.is_empty())
                .map(|t| {
                    DateTime::parse_from_rfc3339(t)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| (field, "must be an RFC 3339 time with offset".to_owned()))
                })
                .transpose()
        };
        let since = time("since", since)?;
        let until = time("until", until)?;
        if let (Some(since), Some(until)) = (since, until) {
            if until <= since {
                return Err(("until", "must be after since".to_owned()));
            }
        }
        let q = q.map(str::trim).filter(|q| !q.is_empty());
        if let Some(q) = q {
            if q.chars().count() > MAX_QUERY_CHARS {
                return Err(("q", format!("must be at most {MAX_QUERY_CHARS} characters")));
            }
            if q.chars().any(char::is_control) {
                return Err(("q", "must not contain control characters".to_owned()));
            }
        }
        Ok(Self {
            statuses,
            since,
            until,
            q: q.map(str::to_owned),
        })
    }

    /// The `LIKE` pattern of `q`: its own `%`, `_` and `\` match themselves.
    fn pattern(&self) -> String {
        self.q.as_deref().map_or_else(String::new, |q| {
            let escaped = q
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        })
    }
}

/// The raffle's display terms an export formats with.
#[derive(Debug, Clone)]
pub struct Terms {
    pub number_width: u8,
    pub time_zone: String,
    pub currency: String,
}

impl From<&RaffleConfig> for Terms {
    fn from(config: &RaffleConfig) -> Self {
        Self {
            number_width: config.number_width,
            time_zone: config.time_zone().to_owned(),
            currency: config.currency.as_str().to_owned(),
        }
    }
}

pub use tombola_projections::csv::minor_digits;

fn safe(column: &str) -> String {
    tombola_projections::csv::neutralised(column)
}

fn time(column: &str) -> String {
    tombola_projections::csv::session_time(column)
}

/// The `COPY` statement of `dataset` for `raffle_id` with `filter`. Only values of checked
/// types are written into it — the raffle's UUID, integers, statuses from the fixed list,
/// instants formatted here — so the planner sees constants (with every value read through
/// `current_setting` it estimated one row and chose a plan 10x slower, decision 0015). The
/// one free text, the search, stays a bound parameter, read back with `current_setting`.
fn statement(dataset: Dataset, raffle_id: Uuid, terms: &Terms, filter: &CsvFilter) -> String {
    let digits = minor_digits(&terms.currency);
    let width = terms.number_width;
    let amount = |column: &str| csv::amount(column, &digits.to_string());
    let (alias, time_column) = match dataset {
        Dataset::Tickets => ("t", "t.since"),
        Dataset::Orders => ("o", "o.reserved_at"),
    };
    let mut conditions = vec![format!("{alias}.raffle_id = '{raffle_id}'")];
    let statuses: Vec<String> = filter
        .statuses
        .iter()
        .filter(|s| dataset.statuses().contains(&s.as_str()))
        .map(|s| format!("'{s}'"))
        .collect();
    if !statuses.is_empty() {
        conditions.push(format!("{alias}.status IN ({})", statuses.join(", ")));
    }
    let instant = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    if let Some(since) = filter.since {
        conditions.push(format!(
            "{time_column} >= '{}'::timestamptz",
            instant(since)
        ));
    }
    if let Some(until) = filter.until {
        conditions.push(format!("{time_column} < '{}'::timestamptz", instant(until)));
    }
    if filter.q.is_some() {
        let q = "current_setting('tombola.q')";
        conditions.push(format!(
            "(o.buyer_name ILIKE {q} OR o.buyer_email ILIKE {q} \
              OR o.buyer_phone ILIKE {q} OR o.payment_reference ILIKE {q})"
        ));
    }
    let conditions = conditions.join(" AND ");
    let select = match dataset {
        // One text per ticket, the CSV line itself: the order's parts come precomputed
        // from the orders read model (decision 0027), so a ticket costs its padded number,
        // its status and a join. A row without them (no order row, or one the projection
        // has not filled) gets the same text computed here, by the same SQL.
        Dataset::Tickets => format!(
            "SELECT lpad(t.number::text, {width}, '0') || ',' || t.status \
                    || coalesce(o.csv_buyer, {buyer}) \
                    || CASE WHEN t.status <> 'sold' THEN '' \
                            WHEN t.since = o.paid_at AND o.csv_paid_at IS NOT NULL \
                            THEN o.csv_paid_at ELSE {since_time} END \
                    || coalesce(o.csv_payment, {payment}) \
             FROM {TICKETS} t \
             LEFT JOIN {ORDERS} o ON o.raffle_id = t.raffle_id AND o.order_id = t.order_id \
             WHERE {conditions} ORDER BY t.number",
            buyer = csv::buyer_part(
                "t.order_id",
                "o.buyer_name",
                "o.buyer_phone",
                "o.buyer_email"
            ),
            since_time = time("t.since"),
            payment = csv::payment_part(
                "o.amount_minor",
                &digits.to_string(),
                "o.currency",
                "o.payment_method",
                "o.payment_reference"
            ),
        ),
        Dataset::Orders => format!(
            "SELECT o.order_id, o.status, {name}, {phone}, {email}, \
                    array_to_string(ARRAY(SELECT lpad(n::text, {width}, '0') \
                        FROM unnest(o.numbers) AS n ORDER BY n), ' '), \
                    cardinality(o.numbers), {amount}, o.currency, {method}, {reference}, \
                    {reserved}, {expires}, {paid}, {refunded}, {refunded_amount}, \
                    CASE WHEN o.late_payment THEN 'true' ELSE 'false' END, \
                    CASE WHEN o.refund_required THEN 'true' ELSE 'false' END, o.receipt \
             FROM {ORDERS} o WHERE {conditions} ORDER BY o.order_id",
            name = safe("o.buyer_name"),
            phone = safe("o.buyer_phone"),
            email = safe("o.buyer_email"),
            amount = amount("o.amount_minor"),
            method = safe("o.payment_method"),
            reference = safe("o.payment_reference"),
            reserved = time("o.reserved_at"),
            expires = time("o.expires_at"),
            paid = time("o.paid_at"),
            refunded = time("o.refunded_at"),
            refunded_amount = amount("o.amount_refunded_minor"),
        ),
    };
    match dataset {
        // The line is one text: the text format, whose escapes the copy task undoes.
        Dataset::Tickets => format!("COPY ({select}) TO STDOUT"),
        Dataset::Orders => format!("COPY ({select}) TO STDOUT WITH (FORMAT csv)"),
    }
}

/// How the bytes of `dataset`'s `COPY` reach the client.
fn decoding(dataset: Dataset) -> Decoding {
    match dataset {
        Dataset::Tickets => Decoding::TextFormat,
        Dataset::Orders => Decoding::AsIs,
    }
}

/// The BOM and the header line, RFC 4180-quoted where needed.
fn preamble(dataset: Dataset, lang: Lang) -> Bytes {
    let mut out = String::from("\u{feff}");
    for (i, name) in dataset.header(lang).iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        if name.contains([',', '"', '\n', '\r']) {
            let _ = write!(out, "\"{}\"", name.replace('"', "\"\""));
        } else {
            out.push_str(name);
        }
    }
    out.push('\n');
    Bytes::from(out)
}

/// Streams `dataset` of `raffle_id` as CSV from the read database at `options`. A statement
/// PostgreSQL refuses fails here, before any byte; the BOM and header come first.
pub async fn csv(
    options: &PgConnectOptions,
    raffle_id: Uuid,
    dataset: Dataset,
    terms: &Terms,
    lang: Lang,
    filter: &CsvFilter,
) -> Result<ExportStream, sqlx::Error> {
    let settings = [
        ("TimeZone", terms.time_zone.clone()),
        ("tombola.q", filter.pattern()),
    ];
    let copy = statement(dataset, raffle_id, terms, filter);
    let rows = copy_out_with(options, &settings, copy, decoding(dataset)).await?;
    let head = futures::stream::once(async move { Ok(preamble(dataset, lang)) });
    Ok(head.chain(rows).boxed())
}

/// The rows an export of `dataset` without filters would hold (for progress bars; the
/// export itself never trusts it), from the raffle's tally in the stats read model: one row
/// read, where counting the rows of a 10M-ticket raffle held up the CLI's first byte by
/// seconds. 0 when the raffle has no tally yet.
pub async fn row_estimate(
    pool: &sqlx::PgPool,
    raffle_id: Uuid,
    dataset: Dataset,
) -> Result<u64, sqlx::Error> {
    let rows = match dataset {
        Dataset::Tickets => "(tally->>'sold')::bigint + (tally->>'reserved')::bigint",
        Dataset::Orders => {
            "(SELECT sum(n::bigint) FROM jsonb_each_text(tally->'orders') AS e(status, n))"
        }
    };
    let count: Option<i64> = sqlx::query_scalar(&format!(
        "SELECT {rows} FROM {RAFFLE_STATS} WHERE raffle_id = $1"
    ))
    .bind(raffle_id)
    .fetch_optional(pool)
    .await?
    .flatten();
    Ok(count.unwrap_or(0).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_refuse_what_they_cannot_use_and_keep_hostile_text_as_text() {
        let parse =
            |status, since, until, q| CsvFilter::parse(Dataset::Tickets, status, since, until, q);
        assert_eq!(
            parse(Some("paid"), None, None, None).unwrap_err().0,
            "status"
        );
        assert_eq!(
            parse(None, Some("yesterday"), None, None).unwrap_err().0,
            "since"
        );
        let later = Some("2026-01-02T00:00:00Z");
        let earlier = Some("2026-01-01T00:00:00-06:00");
        assert_eq!(parse(None, later, earlier, None).unwrap_err().0, "until");
        assert_eq!(parse(None, None, None, Some("a\u{0}b")).unwrap_err().0, "q");
        let hostile = "x' OR 1=1; --%_\\";
        let filter = parse(Some("sold, held,sold"), earlier, later, Some(hostile)).unwrap();
        assert_eq!(filter.statuses, ["sold", "held"]);
        assert_eq!(
            filter.since.unwrap().to_rfc3339(),
            "2026-01-01T06:00:00+00:00"
        );
        assert_eq!(filter.pattern(), "%x' OR 1=1; --\\%\\_\\\\%");
    }

    #[test]
    fn the_preamble_is_a_bom_and_one_header_line() {
        let head = preamble(Dataset::Tickets, Lang::Es);
        assert!(head.starts_with("\u{feff}Número,Estado,".as_bytes()));
        assert!(head.ends_with(b"Referencia de pago\n"));
        for dataset in [Dataset::Tickets, Dataset::Orders] {
            assert_eq!(
                dataset.header(Lang::Es).len(),
                dataset.header(Lang::En).len()
            );
        }
    }

    #[test]
    fn the_search_text_never_enters_the_statement() {
        let filter = CsvFilter::parse(
            Dataset::Tickets,
            Some("sold"),
            Some("2026-01-01T00:00:00-06:00"),
            None,
            Some("x'); DROP TABLE t; --"),
        )
        .unwrap();
        let terms = Terms {
            number_width: 7,
            time_zone: "America/Mexico_City".into(),
            currency: "JPY".into(),
        };
        for dataset in [Dataset::Tickets, Dataset::Orders] {
            let copy = statement(dataset, Uuid::nil(), &terms, &filter);
            assert!(!copy.contains("DROP"), "{copy}");
            assert!(copy.contains("current_setting('tombola.q')"));
            assert!(copy.contains(">= '2026-01-01T06:00:00.000000Z'::timestamptz"));
            assert!(copy.contains("power(10::numeric, 0)"));
        }
    }

    #[test]
    fn amounts_use_the_currencys_digits() {
        assert_eq!(minor_digits("MXN"), 2);
        assert_eq!(minor_digits("JPY"), 0);
        assert_eq!(minor_digits("KWD"), 3);
    }
}

//! The SQL that turns read-model values into spreadsheet-safe CSV text, shared by the orders
//! projection (which stores each order's part of a `tickets.csv` line when the order changes)
//! and the export (which computes the same text for a row that has none stored). One place,
//! so the two can never disagree (decision 0027).
//!
//! Every function takes SQL expressions (column names of ours, never input) and returns an
//! SQL expression. The text is what `COPY … (FORMAT csv)` would print for the value, byte for
//! byte: `NULL` is an empty field, an empty string is `""`, and a value holding `,`, `"`, CR
//! or LF is quoted with its quotes doubled.

/// Digits after the decimal point of a currency's amounts (ISO 4217); most have 2.
const ZERO_DIGITS: &[&str] = &[
    "BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND",
    "VUV", "XAF", "XOF", "XPF",
];
const THREE_DIGITS: &[&str] = &["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"];

/// Digits after the decimal point of a currency's amounts (ISO 4217); most have 2.
pub fn minor_digits(currency: &str) -> u8 {
    if ZERO_DIGITS.contains(&currency) {
        0
    } else if THREE_DIGITS.contains(&currency) {
        3
    } else {
        2
    }
}

/// [`minor_digits`] in SQL, of the currency code `column`.
pub fn minor_digits_sql(column: &str) -> String {
    let list = |codes: &[&str]| {
        codes
            .iter()
            .map(|c| format!("'{c}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "CASE WHEN {column} IN ({}) THEN 0 WHEN {column} IN ({}) THEN 3 ELSE 2 END",
        list(ZERO_DIGITS),
        list(THREE_DIGITS)
    )
}

/// Spreadsheet-safe text (OWASP's CSV injection advice): a leading `'` before `=`, `+`,
/// `-`, `@`, tab or carriage return (by code point: `ascii()` costs half of a regular
/// expression per value). Applied to every text a buyer or organizer typed.
pub fn neutralised(column: &str) -> String {
    format!(
        "CASE WHEN ascii({column}) IN (61, 43, 45, 64, 9, 13) THEN '''' || {column} \
         ELSE {column} END"
    )
}

/// The CSV field of the text `value`, as `COPY … (FORMAT csv)` prints it: empty for `NULL`,
/// `""` for an empty string, quoted (quotes doubled) if it holds `,`, `"`, CR or LF.
pub fn field(value: &str) -> String {
    let v = format!("({value})::text");
    format!(
        "CASE WHEN {v} IS NULL THEN '' \
              WHEN {v} = '' OR strpos({v}, ',') > 0 OR strpos({v}, '\"') > 0 \
                   OR strpos({v}, chr(10)) > 0 OR strpos({v}, chr(13)) > 0 \
              THEN '\"' || replace({v}, '\"', '\"\"') || '\"' ELSE {v} END"
    )
}

/// The field of a buyer- or organizer-typed text: [`field`] of [`neutralised`]`(column)`,
/// written out so that the column appears 10 times rather than 18 (the export's statement
/// holds six of these, and is planned before its first byte). The leading `'` never changes
/// whether the value needs quotes, so that is decided on the value as typed.
pub fn safe_field(column: &str) -> String {
    let v = format!("({column})::text");
    let prefix = format!("CASE WHEN ascii({v}) IN (61, 43, 45, 64, 9, 13) THEN '''' ELSE '' END");
    format!(
        "CASE WHEN {v} IS NULL THEN '' \
              WHEN {v} = '' OR strpos({v}, ',') > 0 OR strpos({v}, '\"') > 0 \
                   OR strpos({v}, chr(10)) > 0 OR strpos({v}, chr(13)) > 0 \
              THEN '\"' || {prefix} || replace({v}, '\"', '\"\"') || '\"' \
              ELSE {prefix} || {v} END"
    )
}

/// An amount in minor units as a decimal with the currency's `digits` (an SQL expression).
pub fn amount(column: &str, digits: &str) -> String {
    format!("round({column}::numeric / power(10::numeric, {digits}), {digits})")
}

/// The `to_char` pattern of ISO 8601 with the offset (`2026-12-03T03:41:20-06:00`), in the
/// session's time zone.
pub const TIME_FORMAT: &str = "'YYYY-MM-DD\"T\"HH24:MI:SSTZH:TZM'";

/// `instant` (a `timestamptz`) in ISO 8601 with the offset, in the session's time zone.
pub fn session_time(instant: &str) -> String {
    format!("to_char({instant}, {TIME_FORMAT})")
}

/// `instant` in ISO 8601 with the offset in the time zone named by `zone` (an SQL
/// expression), whatever the session's: the same text [`session_time`] prints in a session
/// set to that zone (the offset's seconds, which only historic local mean times have, are
/// dropped the same way).
pub fn zoned_time(instant: &str, zone: &str) -> String {
    let local = format!("({instant} AT TIME ZONE {zone})");
    let offset = format!("extract(epoch FROM {local} - ({instant} AT TIME ZONE 'UTC'))::integer");
    format!(
        "to_char({local}, 'YYYY-MM-DD\"T\"HH24:MI:SS') \
         || CASE WHEN {offset} < 0 THEN '-' ELSE '+' END \
         || to_char(abs({offset}) / 3600, 'FM00') || ':' \
         || to_char(abs({offset}) % 3600 / 60, 'FM00')"
    )
}

/// The columns of a `tickets.csv` line that come from the order, between the ticket's
/// status and its purchase time: `,ORDER,NAME,PHONE,EMAIL,`.
pub fn buyer_part(order_id: &str, name: &str, phone: &str, email: &str) -> String {
    format!(
        "',' || {order_id}::text || ',' || {} || ',' || {} || ',' || {} || ','",
        safe_field(name),
        safe_field(phone),
        safe_field(email)
    )
}

/// The columns of a `tickets.csv` line that come from the order, after the purchase time:
/// `,AMOUNT,CURRENCY,METHOD,REFERENCE`. `digits`: an SQL expression.
pub fn payment_part(
    amount_minor: &str,
    digits: &str,
    currency: &str,
    method: &str,
    reference: &str,
) -> String {
    format!(
        "',' || coalesce(({})::text, '') || ',' || {} || ',' || {} || ',' || {}",
        amount(amount_minor, digits),
        field(currency),
        safe_field(method),
        safe_field(reference)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_follow_iso_4217() {
        assert_eq!(minor_digits("MXN"), 2);
        assert_eq!(minor_digits("JPY"), 0);
        assert_eq!(minor_digits("KWD"), 3);
        assert!(minor_digits_sql("c").contains("'JPY'"));
    }
}

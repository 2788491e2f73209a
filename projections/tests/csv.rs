//! The SQL the orders read model writes `tickets.csv`'s parts with prints what the export
//! would print otherwise: fields exactly as `COPY … (FORMAT csv)` quotes them, times exactly
//! as `to_char` prints them in a session set to the raffle's zone.

mod support;

use futures::StreamExt;
use sqlx::Connection as _;
use tombola_projections::csv;

use support::TestDb;

/// Values a buyer or organizer could type, and the shapes CSV must quote.
const VALUES: &[Option<&str>] = &[
    None,
    Some(""),
    Some("plain"),
    Some(" leading and trailing "),
    Some("a,b"),
    Some("say \"hi\""),
    Some("two\nlines"),
    Some("carriage\rreturn"),
    Some("\"\""),
    Some("=SUM(A1)"),
    Some("+52 55"),
    Some("-1"),
    Some("@cmd"),
    Some("\tindent"),
    Some("\r=1"),
    Some("back\\slash"),
    Some("José \"Pepe\", Ñúñez"),
    Some("李小龙"),
];

#[tokio::test]
async fn fields_are_what_copy_csv_prints() {
    let db = TestDb::new().await;
    let mut conn = db.pool.acquire().await.unwrap();
    sqlx::query("CREATE TEMPORARY TABLE v (i integer, v text)")
        .execute(&mut *conn)
        .await
        .unwrap();
    for (i, value) in VALUES.iter().enumerate() {
        sqlx::query("INSERT INTO v VALUES ($1, $2)")
            .bind(i as i32)
            .bind(value)
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    // What COPY prints for each value (neutralised), and the text we build for it.
    let mut stream = conn
        .copy_out_raw(&format!(
            "COPY (SELECT {} FROM v ORDER BY i) TO STDOUT WITH (FORMAT csv)",
            csv::neutralised("v")
        ))
        .await
        .unwrap();
    let mut by_copy = Vec::new();
    while let Some(chunk) = stream.next().await {
        by_copy.extend_from_slice(&chunk.unwrap());
    }
    drop(stream);
    let by_copy = String::from_utf8(by_copy).unwrap();
    let ours: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT {} FROM v ORDER BY i",
        csv::safe_field("v")
    ))
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    assert_eq!(
        by_copy,
        ours.iter().map(|f| format!("{f}\n")).collect::<String>()
    );
    // Formula-looking values start with a quote, whatever else they hold.
    for (value, field) in VALUES.iter().zip(&ours) {
        if let Some(v) = value.filter(|v| v.starts_with(['=', '+', '-', '@', '\t', '\r'])) {
            let bare = field.trim_start_matches('"');
            assert!(bare.starts_with('\''), "{v:?} gave {field:?}");
        }
    }
    drop(conn);
    db.drop().await;
}

#[tokio::test]
async fn zoned_times_are_what_to_char_prints_in_that_zone() {
    let db = TestDb::new().await;
    let zones = [
        "UTC",
        "America/Mexico_City",
        "America/New_York",
        "America/St_Johns",
        "Asia/Kolkata",
        "Asia/Kathmandu",
        "Pacific/Chatham",
        "Australia/Lord_Howe",
        "Africa/Monrovia",
        "Europe/Amsterdam",
    ];
    // Every 7 hours 13 minutes 17.5 seconds over 1900-2040: daylight-saving changes, old
    // local mean times with offsets in seconds, half and quarter hours both sides of UTC.
    let instants = "generate_series('1900-01-01T00:00:00Z'::timestamptz, \
                     '2040-01-01T00:00:00Z'::timestamptz, '7 hours 13 minutes 17.5 seconds')";
    for zone in zones {
        let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::query("SELECT set_config('TimeZone', $1, false)")
            .bind(zone)
            .execute(&mut conn)
            .await
            .unwrap();
        let (checked, differing): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) FILTER (WHERE {} IS DISTINCT FROM {}) \
             FROM {instants} AS t",
            csv::session_time("t"),
            csv::zoned_time("t", "$1"),
        ))
        .bind(zone)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(checked > 100_000);
        assert_eq!(differing, 0, "{zone}");
        conn.close().await.unwrap();
    }
    db.drop().await;
}

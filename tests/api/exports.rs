//! `tickets.csv` and `orders.csv`: they parse back with real CSV parsers (the `csv` crate and
//! Python's `csv` module) to exactly the read model — commas, quotes, newlines, non-ASCII,
//! formula-looking values neutralised — in the raffle's time zone; filters are bound, so
//! hostile search text is only text; only organizers (their raffles) and admins export; the
//! node's limit answers 429; a client that leaves frees its connection; and every export is
//! recorded where the audit trail shows it.

use std::time::Duration;

use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::{eventually, expect_json, expect_problem, spawn_app, spawn_app_with, TestApp};

/// Buyers whose names a spreadsheet would run as formulas, or that CSV must quote.
const NAMES: &[&str] = &[
    "=HYPERLINK(\"http://evil.example\",\"click\")",
    "+SUM(A1:A9)",
    "-2+3",
    "@cmd",
    "José \"Pepe\", Ñúñez",
    "李小龙",
];

/// A raffle in MXN (Spanish headers by default), shown in Mexico City's time, numbers of
/// width 4; one paid order per name in [`NAMES`] (numbers 1+2i and 2+2i), paid by hand
/// with a reference holding a newline, and one order left reserved. Returns the raffle and
/// the position that covers all of it.
async fn sold_raffle(app: &TestApp) -> (Uuid, String) {
    let raffle = app
        .raffle_on_sale(json!({
            "currency": "MXN",
            "price_minor": 1250,
            "number_width": 4,
            "time_zone": "America/Mexico_City",
        }))
        .await;
    for (i, name) in NAMES.iter().enumerate() {
        let i = i as u32;
        let order = app
            .reserve_ok(
                raffle,
                &json!({
                    "buyer": {"name": name, "email": format!("b{i}@example.com"),
                              "phone": "+52 55 1234 5678"},
                    "numbers": [1 + 2 * i, 2 + 2 * i],
                }),
            )
            .await;
        let paid = app
            .post(
                &format!(
                    "/v1/raffles/{raffle}/orders/{}/manual-payment",
                    order["order_id"].as_str().unwrap()
                ),
                &app.organizer_key,
                &json!({"method": "=cash", "reference": format!("recibo {i}\nline 2, \"q\"")}),
            )
            .await;
        assert_eq!(paid.status(), StatusCode::OK);
    }
    app.reserve_ok(
        raffle,
        &json!({"buyer": {"name": "Held Buyer", "email": "held@example.com"}, "numbers": [50]}),
    )
    .await;
    let position = format!("{raffle}:{}", app.event_types(raffle).await.len());
    (raffle, position)
}

async fn export(app: &TestApp, raffle: Uuid, what: &str, query: &str, key: &str) -> String {
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/exports/{what}.csv{query}"),
            key,
        )
        .await;
    let status = response.status();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(content_type, "text/csv; charset=utf-8");
    text
}

/// The rows after the header, parsed by the `csv` crate (RFC 4180), after checking the BOM.
fn parse(text: &str) -> (Vec<String>, Vec<Vec<String>>) {
    let body = text.strip_prefix('\u{feff}').expect("a UTF-8 BOM first");
    let mut reader = csv::ReaderBuilder::new().from_reader(body.as_bytes());
    let header = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    let rows = reader
        .records()
        .map(|r| r.unwrap().iter().map(str::to_owned).collect())
        .collect();
    (header, rows)
}

#[tokio::test]
async fn tickets_and_orders_parse_back_to_the_read_model_with_formulas_neutralised() {
    let app = spawn_app().await;
    let (raffle, position) = sold_raffle(&app).await;
    let query = format!("?min_position={position}");

    let text = export(&app, raffle, "tickets", &query, &app.organizer_key).await;
    let (header, rows) = parse(&text);
    assert_eq!(header[0], "Número", "MXN raffles default to Spanish");
    assert_eq!(header.len(), 11);
    assert_eq!(rows.len(), 2 * NAMES.len() + 1, "{text}");
    // The read model, row by row: the API's order search holds the same buyers.
    let page = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/orders?limit=500"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    for order in page["orders"].as_array().unwrap() {
        let name = order["buyer_name"].as_str().unwrap();
        let shown = if name.starts_with(['=', '+', '-', '@']) {
            format!("'{name}")
        } else {
            name.to_owned()
        };
        for number in order["numbers"].as_array().unwrap() {
            let padded = format!("{:04}", number.as_u64().unwrap());
            let row = rows
                .iter()
                .find(|r| r[0] == padded)
                .unwrap_or_else(|| panic!("ticket {padded} in {text}"));
            assert_eq!(row[2], order["order_id"].as_str().unwrap());
            assert_eq!(row[3], shown, "the name, neutralised if formula-like");
            assert_eq!(row[5], order["buyer_email"].as_str().unwrap());
            assert_eq!(row[8], "MXN");
            if order["status"] == "paid" {
                assert_eq!(row[1], "sold");
                assert_eq!(
                    row[4], "'+52 55 1234 5678",
                    "a leading + is neutralised too"
                );
                assert_eq!(row[7], format!("{}.{:02}", 2500 / 100, 2500 % 100));
                assert_eq!(row[9], "'=cash");
                assert_eq!(row[10], order["payment_reference"].as_str().unwrap());
                assert!(row[10].contains('\n') && row[10].contains('"'));
                // Mexico City has no daylight saving time since 2022: always -06:00.
                assert!(row[6].ends_with("-06:00"), "purchase time {}", row[6]);
                let paid: chrono::DateTime<chrono::FixedOffset> = row[6].parse().unwrap();
                let expected: chrono::DateTime<chrono::Utc> =
                    order["paid_at"].as_str().unwrap().parse().unwrap();
                assert_eq!(paid.timestamp(), expected.timestamp());
            } else {
                assert_eq!(row[1], "held");
                assert_eq!(row[6], "", "not purchased yet");
            }
        }
    }

    let text = export(&app, raffle, "orders", "?lang=en", &app.admin_key).await;
    let (header, rows) = parse(&text);
    assert_eq!(header[0], "Order");
    assert_eq!(header.len(), 19);
    assert_eq!(header[18], "Receipt");
    assert_eq!(rows.len(), NAMES.len() + 1);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    // A paid order's receipt is the one its own view shows (and audit verify checks).
    let mut paid = 0;
    for order in page["orders"].as_array().unwrap() {
        let id = order["order_id"].as_str().unwrap();
        let row = rows.iter().find(|r| r[0] == id).expect("every order");
        let view = app.order(raffle, id).await;
        let receipt = &view["receipt"];
        if order["status"] == "paid" {
            paid += 1;
            let expected = format!(
                "{}:{}",
                receipt["sequence"],
                receipt["hash"].as_str().unwrap()
            );
            assert_eq!(row[18], expected);
            assert_eq!(
                order["receipt"],
                expected.as_str(),
                "the read API shows it too"
            );
        } else {
            assert_eq!(row[18], "", "no receipt before payment");
            assert!(receipt.is_null());
        }
    }
    assert!(paid > 0, "the sale paid some orders");
    let chinese = rows.iter().find(|r| r[2] == "李小龙").unwrap();
    assert_eq!(
        chinese[5], "0011 0012",
        "numbers padded to the raffle's width"
    );
    assert_eq!(chinese[6], "2");
    assert_eq!(chinese[7], "25.00");

    // Python's csv module reads the same file to the same cells.
    let dir = std::env::temp_dir().join(format!("tombola-csv-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("orders.csv");
    std::fs::write(&file, &text).unwrap();
    let script = "import csv, json, sys\n\
                  with open(sys.argv[1], newline='', encoding='utf-8-sig') as f:\n\
                  \x20   print(json.dumps(list(csv.reader(f))))";
    let output = std::process::Command::new("python3")
        .args(["-c", script, file.to_str().unwrap()])
        .output()
        .expect("python3 runs");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(output.status.success(), "{output:?}");
    let python: Vec<Vec<String>> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(python[0], header);
    assert_eq!(python[1..], rows[..]);
    app.teardown().await;
}

/// `tickets.csv` joins each ticket to its order's parts of the line, which the orders read
/// model stores when the order changes (decision 0027). Where they are missing, the export
/// computes them: both ways give the same bytes, neutralised, quoted, and in the raffle's
/// time zone.
#[tokio::test]
async fn precomputed_order_parts_give_the_same_lines_as_computing_them() {
    let app = spawn_app().await;
    let (raffle, position) = sold_raffle(&app).await;
    let query = format!("?min_position={position}");
    let precomputed = export(&app, raffle, "tickets", &query, &app.organizer_key).await;
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM read_orders WHERE raffle_id = $1 \
           AND csv_buyer IS NOT NULL AND csv_payment IS NOT NULL \
           AND (paid_at IS NULL) = (csv_paid_at IS NULL)",
    )
    .bind(raffle)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        stored,
        NAMES.len() as i64 + 1,
        "the projection stored every order's parts (the export waited for it)"
    );
    assert!(precomputed.contains(",\"'=HYPERLINK(\"\"http://evil.example"));
    assert!(precomputed.contains("-06:00,25.00,MXN,'=cash,\"recibo 0\nline 2, \"\"q\"\"\"\n"));
    sqlx::query(
        "UPDATE read_orders SET csv_buyer = NULL, csv_paid_at = NULL, csv_payment = NULL \
         WHERE raffle_id = $1",
    )
    .bind(raffle)
    .execute(app.pool())
    .await
    .unwrap();
    let computed = export(&app, raffle, "tickets", &query, &app.organizer_key).await;
    assert_eq!(precomputed, computed);
    app.teardown().await;
}

#[tokio::test]
async fn tab_and_carriage_return_at_the_start_are_neutralised() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    // The API refuses control characters in names; the export must not rely on it. A row
    // written straight into the read models (which only the projection writes otherwise).
    let order = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO read_orders (raffle_id, order_id, status, buyer_name, buyer_email, \
           buyer_phone, numbers, amount_minor, currency, payment_method, payment_reference, \
           reserved_at, expires_at, late_payment, refund_required, amount_refunded_minor, \
           last_sequence) \
         VALUES ($1, $2, 'reserved', E'\\tcmd', E'\\r=1+1@example.com', '-1', '{99}', 500, \
                 'EUR', '@SUM(1)', 'plain', now(), now(), false, false, 0, 1)",
    )
    .bind(raffle)
    .bind(order)
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO read_tickets (raffle_id, number, order_id, status, since) \
         VALUES ($1, 99, $2, 'held', now())",
    )
    .bind(raffle)
    .bind(order)
    .execute(app.pool())
    .await
    .unwrap();
    let text = export(&app, raffle, "tickets", "", &app.organizer_key).await;
    let (_, rows) = parse(&text);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0][3], "'\tcmd");
    assert_eq!(rows[0][4], "'-1");
    assert_eq!(rows[0][5], "'\r=1+1@example.com");
    assert_eq!(rows[0][9], "'@SUM(1)");
    assert_eq!(rows[0][10], "plain");
    app.teardown().await;
}

#[tokio::test]
async fn filters_are_bound_so_hostile_search_text_is_only_text() {
    let app = spawn_app().await;
    let (raffle, position) = sold_raffle(&app).await;
    let get = |query: String| {
        let app = &app;
        async move { parse(&export(app, raffle, "tickets", &query, &app.organizer_key).await).1 }
    };
    let sold = get(format!("?min_position={position}&status=sold")).await;
    assert_eq!(sold.len(), 2 * NAMES.len());
    assert_eq!(get("?status=held".into()).await.len(), 1);
    let pepe = get("?q=%C3%BA%C3%B1EZ".into()).await; // "úñEZ": case-insensitive
    assert_eq!(pepe.len(), 2);
    assert!(pepe.iter().all(|r| r[3] == "José \"Pepe\", Ñúñez"));
    for hostile in [
        "' OR '1'='1",
        "x'); DROP TABLE read_tickets; --",
        "%",
        "_",
        "\\",
        "$1",
        "current_setting('tombola.raffle')",
    ] {
        let query = format!("?q={}", urlencode(hostile));
        assert!(get(query).await.is_empty(), "{hostile:?} matched rows");
    }
    let all = get(String::new()).await;
    assert_eq!(all.len(), 2 * NAMES.len() + 1, "the table is intact");
    // Time range: nothing before creation, everything before a minute from now.
    let now = chrono::Utc::now();
    let at = |t: chrono::DateTime<chrono::Utc>| urlencode(&t.to_rfc3339());
    let until = now + chrono::Duration::minutes(1);
    assert!(
        get(format!("?until={}", at(now - chrono::Duration::hours(1))))
            .await
            .is_empty()
    );
    assert_eq!(
        get(format!(
            "?since={}&until={}",
            at(now - chrono::Duration::hours(1)),
            at(until)
        ))
        .await
        .len(),
        all.len()
    );
    // Bad filters are 422 and export nothing.
    for (query, field) in [
        ("?status=paid", "status"),
        ("?since=yesterday", "since"),
        ("?lang=fr", "lang"),
    ] {
        let response = app
            .get(
                &format!("/v1/raffles/{raffle}/exports/tickets.csv{query}"),
                &app.organizer_key,
            )
            .await;
        let (body, _) = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert_eq!(body["field"], field);
    }
    app.teardown().await;
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn only_organizers_of_the_raffle_and_admins_export() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    for what in ["tickets.csv", "orders.csv", "events.ndjson"] {
        let path = format!("/v1/raffles/{raffle}/exports/{what}");
        let client = app.get(&path, &app.client_key).await;
        expect_problem(client, StatusCode::FORBIDDEN, "forbidden").await;
        let other = app.get(&path, &app.other_organizer_key).await;
        expect_problem(other, StatusCode::NOT_FOUND, "not_found").await;
        let nobody = app.get(&path, "").await;
        assert_eq!(nobody.status(), StatusCode::UNAUTHORIZED);
        let missing = app
            .get(
                &format!("/v1/raffles/{}/exports/{what}", Uuid::now_v7()),
                &app.organizer_key,
            )
            .await;
        expect_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(
            app.get(&path, &app.admin_key).await.status(),
            StatusCode::OK
        );
    }
    let list = app
        .get(&format!("/v1/raffles/{raffle}/exports"), &app.client_key)
        .await;
    expect_problem(list, StatusCode::FORBIDDEN, "forbidden").await;
    let refused: i64 = sqlx::query_scalar("SELECT count(*) FROM exports_log")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(refused, 3, "only the admin's three exports were taken");
    app.teardown().await;
}

/// Fills the tickets read model of `raffle` with `count` sold rows directly (the export
/// reads only the read models): enough bytes that a client which stops reading holds the
/// export open.
async fn many_tickets(app: &TestApp, raffle: Uuid, count: i32) {
    sqlx::query(
        "INSERT INTO read_tickets (raffle_id, number, order_id, status, since) \
         SELECT $1, n, '00000000-0000-7000-8000-000000000000', 'sold', now() \
         FROM generate_series(1, $2) AS n",
    )
    .bind(raffle)
    .bind(count)
    .execute(app.pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn the_export_limit_answers_429_and_a_client_that_leaves_frees_its_connection() {
    let app = spawn_app_with(|settings| settings.max_exports = 1).await;
    let raffle = app.raffle_on_sale(json!({"ticket_count": 1_000_000})).await;
    many_tickets(&app, raffle, 300_000).await;
    let running = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'tombola-export' \
             AND datname = current_database()",
        )
        .fetch_one(app.pool())
        .await
        .unwrap()
    };
    let path = format!("/v1/raffles/{raffle}/exports/tickets.csv");
    let mut first = app.get(&path, &app.organizer_key).await;
    assert_eq!(first.status(), StatusCode::OK);
    let export_id: Uuid = first.headers()["tombola-export-id"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut head = Vec::new();
    while head.len() < 1_000 {
        head.extend_from_slice(&first.chunk().await.unwrap().expect("more chunks"));
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with('\u{feff}'));
    assert!(
        head.contains("\n0000001,sold,"),
        "padded to the raffle's width: {head}"
    );
    assert_eq!(running().await, 1, "the export runs on its own connection");

    let second = app.get(&path, &app.organizer_key).await;
    assert_eq!(second.headers()[RETRY_AFTER], "5");
    expect_problem(second, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;

    drop(first);
    eventually(
        Duration::from_secs(20),
        "the export's connection to close",
        || async { (running().await == 0).then_some(()) },
    )
    .await;
    let outcome = || async {
        sqlx::query_scalar::<_, String>("SELECT outcome FROM exports_log WHERE export_id = $1")
            .bind(export_id)
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    eventually(
        Duration::from_secs(20),
        "the export recorded as aborted",
        || async { (outcome().await == "aborted").then_some(()) },
    )
    .await;
    let limited: i64 = sqlx::query_scalar("SELECT count(*) FROM exports_log")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(limited, 1, "the refused export was not taken");
    // The place is free again: the next export runs to its end.
    let text = export(&app, raffle, "orders", "?lang=en", &app.organizer_key).await;
    assert_eq!(parse(&text).1.len(), 0);
    app.teardown().await;
}

#[tokio::test]
async fn a_raffle_shows_times_in_its_own_time_zone_and_refuses_unknown_ones() {
    let app = spawn_app().await;
    for zone in ["Mars/Olympus_Mons", "Europe/../etc/passwd", "UTC'; --"] {
        let response = app
            .post(
                "/v1/raffles",
                &app.organizer_key,
                &crate::helpers::raffle_request(json!({"time_zone": zone})),
            )
            .await;
        let (body, _) = expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert_eq!(body["field"], "time_zone");
    }
    let listed: i64 = sqlx::query_scalar("SELECT count(*) FROM raffles")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(listed, 0, "a refused raffle is not created");

    let raffle = app
        .raffle_on_sale(json!({"time_zone": "Asia/Kolkata"}))
        .await;
    assert_eq!(app.raffle(raffle).await["time_zone"], "Asia/Kolkata");
    let order = app
        .reserve_ok(raffle, &crate::helpers::numbers("a@example.com", &[3]))
        .await;
    app.pay(raffle, order["order_id"].as_str().unwrap()).await;
    let position = format!("{raffle}:{}", app.event_types(raffle).await.len());
    let text = export(
        &app,
        raffle,
        "orders",
        &format!("?min_position={position}"),
        &app.organizer_key,
    )
    .await;
    let (header, rows) = parse(&text);
    assert_eq!(header[0], "Order", "EUR raffles default to English");
    for column in [11, 13] {
        assert!(rows[0][column].ends_with("+05:30"), "{}", rows[0][column]);
    }
    assert_eq!(rows[0][14], "", "never refunded");
    let utc = app.raffle_on_sale(json!({})).await;
    assert_eq!(app.raffle(utc).await["time_zone"], "UTC");
    app.teardown().await;
}

/// Runs the `tombola` binary against the test's database.
fn tombola(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tombola"))
        .args(args)
        .env("DATABASE_URL", &app.db_url)
        .env("TOMBOLA_DB_CONNECTIONS", "2")
        .env("USER", "auditor")
        .output()
        .expect("the tombola binary runs")
}

#[tokio::test]
async fn every_export_is_recorded_where_the_audit_trail_shows_it() {
    let app = spawn_app().await;
    let (raffle, position) = sold_raffle(&app).await;
    let query = format!("?min_position={position}&status=sold&q=%40example&lang=en");
    let text = export(&app, raffle, "tickets", &query, &app.organizer_key).await;
    assert_eq!(parse(&text).1.len(), 2 * NAMES.len());

    // The CLI exports the same rows to a file, and is recorded too.
    let dir = std::env::temp_dir().join(format!("tombola-export-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tickets.csv");
    let id = raffle.to_string();
    let cli = tombola(
        &app,
        &[
            "export",
            &id,
            "--what",
            "tickets",
            "--format",
            "csv",
            "--status",
            "sold",
            "--q",
            "@example",
            "--lang",
            "en",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    assert!(cli.status.success(), "{cli:?}");
    let from_cli = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(from_cli, text, "the CLI writes exactly what the API serves");

    let body = eventually(
        Duration::from_secs(20),
        "both exports recorded as completed",
        || async {
            let body = expect_json(
                app.get(&format!("/v1/raffles/{raffle}/exports"), &app.organizer_key)
                    .await,
                StatusCode::OK,
            )
            .await;
            let done = body["exports"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["outcome"] == "completed");
            done.then_some(body)
        },
    )
    .await;
    let exports = body["exports"].as_array().unwrap();
    assert_eq!(exports.len(), 2, "{body}");
    let (api, cli) = (&exports[0], &exports[1]);
    assert_eq!(api["what"], "tickets");
    assert_eq!(api["format"], "csv");
    assert_eq!(api["source"], "api");
    assert!(api["actor"].as_str().unwrap().starts_with("key:"));
    assert_eq!(
        api["filters"],
        json!({"statuses": ["sold"], "q": "@example", "lang": "en"})
    );
    assert_eq!(api["bytes"], json!(text.len()));
    assert!(api["request_id"].as_str().is_some_and(|r| !r.is_empty()));
    assert_eq!(cli["source"], "operator");
    assert_eq!(cli["actor"], "operator:auditor");
    assert_eq!(cli["filters"], api["filters"]);
    // Another organizer sees nothing of it.
    let other = app
        .get(
            &format!("/v1/raffles/{raffle}/exports"),
            &app.other_organizer_key,
        )
        .await;
    expect_problem(other, StatusCode::NOT_FOUND, "not_found").await;
    // The operator's view of the same trail.
    let trail = tombola(&app, &["audit", &id, "--exports", "--json"]);
    assert!(trail.status.success(), "{trail:?}");
    let lines: Vec<Value> = String::from_utf8(trail.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["export_id"], api["export_id"]);
    app.teardown().await;
}

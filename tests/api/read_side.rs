//! The read endpoints over the projections: read-your-own-writes with `min_position`,
//! search and keyset pages, scope, bad input, and a read database of its own.

use reqwest::header::RETRY_AFTER;
use reqwest::StatusCode;
use serde_json::{json, Value};
use uuid::Uuid;

use super::helpers::{expect_json, expect_problem, numbers, quantity, spawn_app, spawn_app_with};

fn position_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("tombola-position")
        .expect("a command response carries Tombola-Position")
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_reservation_read_at_once_with_its_position_shows_in_every_read_model() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let response = app
        .reserve(
            raffle,
            &app.client_key,
            &numbers("ada@example.com", &[7, 13]),
        )
        .await;
    let position = position_of(&response);
    assert!(position.starts_with(&format!("{raffle}:")), "{position}");
    let order = expect_json(response, StatusCode::CREATED).await;
    let order_id = order["order_id"].as_str().unwrap().to_owned();

    let page = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/orders?min_position={position}"),
            &app.client_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let orders = page["orders"].as_array().unwrap();
    assert_eq!(orders.len(), 1, "{page}");
    assert_eq!(orders[0]["order_id"], json!(order_id));
    assert_eq!(orders[0]["status"], "reserved");
    assert_eq!(orders[0]["numbers"], json!([7, 13]));
    assert_eq!(orders[0]["buyer_email"], "ada@example.com");

    let ticket = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/tickets/13?min_position={position}"),
            &app.client_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket["status"], "held");
    assert_eq!(ticket["order_id"], json!(order_id));

    let stats = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/stats?min_position={position}"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["reserved"], 2);
    assert_eq!(stats["available"], 98);
    assert_eq!(stats["orders"]["reserved"], 1);
    assert_eq!(stats["reservations"], 1);
    app.teardown().await;
}

#[tokio::test]
async fn a_position_the_read_model_does_not_reach_in_time_is_a_503_with_retry_after() {
    let app =
        spawn_app_with(|args| args.min_position_wait = std::time::Duration::from_millis(100)).await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let response = app
        .get(
            &format!("/v1/raffles/{raffle}/orders?min_position={raffle}:1000"),
            &app.client_key,
        )
        .await;
    let (_, headers) =
        expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "unavailable").await;
    assert!(headers.get(RETRY_AFTER).is_some());
    app.teardown().await;
}

#[tokio::test]
async fn orders_are_searched_and_paged_by_key_with_input_checked() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let mut position = String::new();
    for email in ["ada@example.com", "grace@example.com", "alan_t@example.com"] {
        let response = app
            .reserve(raffle, &app.client_key, &quantity(email, 1))
            .await;
        position = position_of(&response);
        expect_json(response, StatusCode::CREATED).await;
    }
    let get = |query: String| {
        let app = &app;
        async move {
            app.get(
                &format!("/v1/raffles/{raffle}/orders?{query}"),
                &app.client_key,
            )
            .await
        }
    };
    let first = expect_json(
        get(format!("limit=2&min_position={position}")).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(first["orders"].as_array().unwrap().len(), 2);
    let after = first["next_after"]
        .as_str()
        .expect("a next page")
        .to_owned();
    let second = expect_json(get(format!("limit=2&after={after}")).await, StatusCode::OK).await;
    assert_eq!(second["orders"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_after"], Value::Null);
    let ids = |page: &Value| -> Vec<String> {
        page["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["order_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = ids(&first);
    all.extend(ids(&second));
    let mut sorted = all.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(all, sorted, "pages are in key order without repeats");

    let found = expect_json(get("q=GRACE".into()).await, StatusCode::OK).await;
    assert_eq!(found["orders"].as_array().unwrap().len(), 1);
    assert_eq!(found["orders"][0]["buyer_email"], "grace@example.com");
    // LIKE's wildcards are matched literally: `_` only finds the e-mail that has one.
    let literal = expect_json(get("q=_".into()).await, StatusCode::OK).await;
    assert_eq!(literal["orders"].as_array().unwrap().len(), 1);
    let quote = expect_json(
        get("q=%27%3B%20DROP%20TABLE%20events%3B--".into()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(quote["orders"].as_array().unwrap().len(), 0);

    for bad in ["status=lost", "limit=0", "limit=501", "min_position=abc"] {
        expect_problem(
            get(bad.into()).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
    }
    let other = Uuid::new_v4();
    expect_problem(
        get(format!("min_position={other}:1")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    expect_problem(
        app.get(
            &format!("/v1/raffles/{raffle}/orders"),
            &app.other_organizer_key,
        )
        .await,
        // Another organizer's raffle does not exist for them (issue 18).
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    expect_problem(
        app.get(
            &format!("/v1/raffles/{raffle}/tickets/101"),
            &app.client_key,
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    app.teardown().await;
}

/// Every command answers with its position, not only reservations: a payment read at once
/// with it shows as sold, in the hour's sales too; a release frees the numbers.
#[tokio::test]
async fn payments_and_releases_answer_with_the_position_reads_can_wait_for() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({"price_minor": 500})).await;
    let paid = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[7, 13]))
        .await;
    let released = app
        .reserve_ok(raffle, &numbers("bea@example.com", &[21]))
        .await;
    let response = app
        .post(
            &format!(
                "/v1/raffles/{raffle}/orders/{}/manual-payment",
                paid["order_id"].as_str().unwrap()
            ),
            &app.organizer_key,
            &json!({"method": "cash", "reference": "receipt 1"}),
        )
        .await;
    let after_payment = position_of(&response);
    expect_json(response, StatusCode::OK).await;
    let response = app
        .request(
            reqwest::Method::DELETE,
            &format!(
                "/v1/raffles/{raffle}/orders/{}",
                released["order_id"].as_str().unwrap()
            ),
            &app.client_key,
        )
        .send()
        .await
        .unwrap();
    let after_release = position_of(&response);
    expect_json(response, StatusCode::OK).await;
    let sequence =
        |position: &str| -> u64 { position.rsplit(':').next().unwrap().parse().unwrap() };
    assert!(sequence(&after_release) > sequence(&after_payment));

    let stats = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/stats?min_position={after_release}"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(stats["sold"], 2, "{stats}");
    assert_eq!(stats["reserved"], 0, "{stats}");
    assert_eq!(stats["orders"]["paid"], 1, "{stats}");
    let hours = stats["sales_per_hour"].as_array().unwrap();
    assert_eq!(hours.len(), 1, "{stats}");
    assert_eq!(
        (hours[0]["tickets"].as_i64(), hours[0]["orders"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(hours[0]["revenue_minor"], 1000, "{stats}");
    app.teardown().await;
}

#[tokio::test]
async fn platform_stats_are_scoped_to_the_key_and_projection_status_to_admins() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let response = app
        .reserve(raffle, &app.client_key, &quantity("ada@example.com", 3))
        .await;
    let position = position_of(&response);
    expect_json(response, StatusCode::CREATED).await;
    // Wait through a per-raffle read; platform totals are the same projection batch's.
    expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/stats?min_position={position}"),
            &app.organizer_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let mine = expect_json(
        app.get("/v1/stats", &app.organizer_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(mine["organizer_id"], "org-a");
    let status = expect_json(
        app.get("/v1/admin/projections", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    let names: Vec<&str> = status["projections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "orders",
            "tickets",
            "raffle_stats",
            "platform_stats",
            "audit_index"
        ]
    );
    expect_problem(
        app.get("/v1/admin/projections", &app.organizer_key).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let other = expect_json(
        app.get("/v1/stats", &app.other_organizer_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(other["organizer_id"], "org-b");
    assert_eq!(
        other["by_currency"],
        json!([]),
        "org-b sees none of org-a's sales"
    );
    expect_problem(
        app.get("/v1/stats?organizer_id=org-a", &app.other_organizer_key)
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    app.teardown().await;
}

#[tokio::test]
async fn the_read_models_can_live_in_a_database_of_their_own() {
    let (read_store, read_url) = tombola::testing::fresh_database(4).await.unwrap();
    let url = read_url.clone();
    let app = spawn_app_with(move |args| args.read_database_url = Some(url)).await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let response = app
        .reserve(raffle, &app.client_key, &numbers("ada@example.com", &[5]))
        .await;
    let position = position_of(&response);
    let order = expect_json(response, StatusCode::CREATED).await;
    let ticket = expect_json(
        app.get(
            &format!("/v1/raffles/{raffle}/tickets/5?min_position={position}"),
            &app.client_key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ticket["order_id"], order["order_id"]);
    let in_read: i64 = sqlx::query_scalar("SELECT count(*) FROM read_tickets WHERE raffle_id = $1")
        .bind(raffle)
        .fetch_one(read_store.pool())
        .await
        .unwrap();
    assert_eq!(in_read, 1, "the ticket row is in the read database");
    let in_write: Option<String> = sqlx::query_scalar("SELECT to_regclass('read_tickets')::text")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(in_write, None, "the write database holds no read models");
    app.teardown().await;
    read_store.pool().close().await;
    tombola::testing::drop_database(&read_url).await.unwrap();
}

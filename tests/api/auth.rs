//! Authentication (401: no key, a wrong or revoked one) and scope (403: a valid key on
//! another organizer's raffle, or a client key doing an organizer's job). Neither changes
//! anything.

use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::*;

#[tokio::test]
async fn a_missing_or_wrong_key_is_401() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let before = snapshot(&app, raffle).await;
    let path = format!("/v1/raffles/{raffle}/reservations");
    let body = numbers("ada@example.com", &[1]);

    // The right key id with another secret.
    let key_id = app.client_key.split('_').nth(1).unwrap();
    let wrong_secret = format!("tmb_{key_id}_c2VjcmV0");
    let unknown_key = format!("tmb_{}_c2VjcmV0", Uuid::new_v4().simple());
    let attempts = [
        None,
        Some(format!("Bearer {wrong_secret}")),
        Some(format!("Bearer {unknown_key}")),
        Some("Bearer tmb_garbage".to_owned()),
        Some("Bearer ".to_owned()),
        Some(format!("Basic {}", app.client_key)),
        Some(app.client_key.clone()),
    ];
    for authorization in attempts {
        let mut request = app.http.post(app.url(&path)).json(&body);
        if let Some(value) = &authorization {
            request = request.header("Authorization", value);
        }
        let response = request.send().await.unwrap();
        expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    for path in [
        "/v1/raffles".to_owned(),
        format!("/v1/raffles/{raffle}"),
        format!("/v1/raffles/{raffle}/availability"),
    ] {
        expect_problem(
            app.get(&path, "").await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    // Checked before the body: a bad body without a key is still 401.
    let response = app
        .http
        .post(app.url(&path))
        .header(CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // A revoked key stops working (once the short lookup cache has forgotten it).
    let revoked = tombola::api::auth::Keys::create(
        &app.store,
        tombola::api::auth::Role::Client,
        Some(ORGANIZER),
        None,
    )
    .await
    .unwrap();
    let key_id = Uuid::parse_str(revoked.split('_').nth(1).unwrap()).unwrap();
    sqlx::query("UPDATE api_keys SET revoked_at = now() WHERE key_id = $1")
        .bind(key_id)
        .execute(app.store.pool())
        .await
        .unwrap();
    expect_problem(
        app.reserve(raffle, &revoked, &body).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    )
    .await;

    assert_unchanged(&app, raffle, &before, "unauthenticated requests").await;
    app.teardown().await;
}

#[tokio::test]
async fn another_organizers_raffle_is_404_and_a_role_outside_the_key_403() {
    let app = spawn_app().await;
    let raffle = app.raffle_on_sale(json!({})).await;
    let order = app
        .reserve_ok(raffle, &numbers("ada@example.com", &[1]))
        .await;
    let order = order["order_id"].as_str().unwrap().to_owned();
    let before = snapshot(&app, raffle).await;
    let b = &app.other_organizer_key;
    let client = &app.client_key;
    let pay = json!({"method": "cash", "reference": "r"});

    // Organizer B on organizer A's raffle: answered exactly as a raffle that does not exist.
    let hidden = [
        app.get(&format!("/v1/raffles/{raffle}"), b).await,
        app.get(&format!("/v1/raffles/{raffle}/availability"), b)
            .await,
        app.get(&format!("/v1/raffles/{raffle}/availability/bitmap"), b)
            .await,
        app.get(&format!("/v1/raffles/{raffle}/orders/{order}"), b)
            .await,
        app.reserve(raffle, b, &numbers("eve@example.com", &[2]))
            .await,
        app.post_empty(&format!("/v1/raffles/{raffle}/close"), b)
            .await,
        app.post_empty(&format!("/v1/raffles/{raffle}/cancel"), b)
            .await,
        app.post(
            &format!("/v1/raffles/{raffle}/orders/{order}/manual-payment"),
            b,
            &pay,
        )
        .await,
        app.post_empty(&format!("/v1/raffles/{raffle}/orders/{order}/refund"), b)
            .await,
        app.request(
            Method::DELETE,
            &format!("/v1/raffles/{raffle}/orders/{order}"),
            b,
        )
        .send()
        .await
        .unwrap(),
    ];
    for response in hidden {
        let (problem, _) = expect_problem(response, StatusCode::NOT_FOUND, "not_found").await;
        assert_eq!(problem["detail"], "raffle not found");
    }
    let forbidden = [
        // Organizer A's own key cannot create for B.
        app.post(
            "/v1/raffles",
            &app.organizer_key,
            &raffle_request(json!({"organizer_id": OTHER_ORGANIZER})),
        )
        .await,
        // A client key may sell, not run the raffle.
        app.post_empty(&format!("/v1/raffles/{raffle}/close"), client)
            .await,
        app.post_empty(&format!("/v1/raffles/{raffle}/open"), client)
            .await,
        app.post_empty(&format!("/v1/raffles/{raffle}/cancel"), client)
            .await,
        app.post(
            &format!("/v1/raffles/{raffle}/draw"),
            client,
            &json!({"seed": SEED, "public_entropy": "x"}),
        )
        .await,
        app.post(
            &format!("/v1/raffles/{raffle}/orders/{order}/manual-payment"),
            client,
            &pay,
        )
        .await,
        app.post_empty(
            &format!("/v1/raffles/{raffle}/orders/{order}/refund"),
            client,
        )
        .await,
        app.post("/v1/raffles", client, &raffle_request(json!({})))
            .await,
    ];
    for response in forbidden {
        expect_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
    }
    assert_unchanged(&app, raffle, &before, "requests outside the key's scope").await;
    assert_eq!(app.order(raffle, &order).await["status"], "reserved");
    let raffles: i64 = sqlx::query_scalar("SELECT count(*) FROM raffles")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(raffles, 1);

    // B's list does not show A's raffle.
    let list = expect_json(app.get("/v1/raffles", b).await, StatusCode::OK).await;
    assert_eq!(list["raffles"], json!([]));
    app.teardown().await;
}

/// A node that reads every key afresh: what every node sees once its cache has expired.
fn uncached(app: &TestApp) -> tombola::api::auth::Keys {
    tombola::api::auth::Keys::with_cache_ttl(app.store.clone(), std::time::Duration::ZERO)
}

fn key_id(key: &str) -> Uuid {
    Uuid::parse_str(key.split('_').nth(1).unwrap()).unwrap()
}

#[tokio::test]
async fn keys_are_listed_revoked_and_rotated_with_a_grace_period() {
    use tombola::api::auth::{Keys, Role};
    let app = spawn_app().await;
    let node = uncached(&app);
    let key = Keys::create(&app.store, Role::Client, Some(ORGANIZER), Some("shop"))
        .await
        .unwrap();
    assert!(node.verify(&key).await.is_ok());

    // Use is recorded (off the request path), and listing never shows a secret.
    let listed = eventually(
        std::time::Duration::from_secs(10),
        "the key's use",
        || async {
            let listed = Keys::list(&app.store, Some(ORGANIZER), false)
                .await
                .unwrap();
            listed
                .iter()
                .any(|k| k.key_id == key_id(&key) && k.last_used_at.is_some())
                .then_some(listed)
        },
    )
    .await;
    let info = listed
        .iter()
        .find(|k| k.key_id == key_id(&key))
        .expect("listed");
    assert!(info.last_used_at.is_some(), "use recorded: {info:?}");
    assert_eq!(
        (info.role.as_str(), info.label.as_deref()),
        ("client", Some("shop"))
    );
    let json = serde_json::to_string(&listed).unwrap();
    assert!(!json.contains(key.rsplit('_').next().unwrap()) && !json.contains("hash"));

    // Rotation: the new key works at once, the old one through its grace period.
    let rotated = Keys::rotate(
        &app.store,
        key_id(&key),
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap()
    .expect("a valid key rotates");
    assert!(node.verify(&rotated).await.is_ok());
    assert!(node.verify(&key).await.is_ok(), "the grace period holds");
    let caller = node.verify(&rotated).await.unwrap();
    assert_eq!(
        (caller.role, caller.organizer_id.as_deref()),
        (Role::Client, Some(ORGANIZER))
    );

    // Rotated without grace: refused at once by any node reading afresh.
    let again = Keys::rotate(&app.store, key_id(&rotated), std::time::Duration::ZERO)
        .await
        .unwrap()
        .expect("rotates");
    assert!(node.verify(&rotated).await.is_err());
    assert!(node.verify(&again).await.is_ok());

    // Revocation: refused at once by a node reading afresh; a second revoke is a no-op.
    assert!(Keys::revoke(&app.store, key_id(&again)).await.unwrap());
    assert!(node.verify(&again).await.is_err());
    assert!(!Keys::revoke(&app.store, key_id(&again)).await.unwrap());
    assert!(
        Keys::rotate(&app.store, key_id(&again), std::time::Duration::ZERO)
            .await
            .unwrap()
            .is_none()
    );
    let valid = Keys::list(&app.store, Some(ORGANIZER), false)
        .await
        .unwrap();
    assert!(!valid.iter().any(|k| k.key_id == key_id(&again)));
    let all = Keys::list(&app.store, Some(ORGANIZER), true).await.unwrap();
    let revoked = all.iter().find(|k| k.key_id == key_id(&again)).unwrap();
    assert!(revoked.revoked_at.is_some());
    app.teardown().await;
}

#[tokio::test]
async fn the_cli_lists_revokes_and_rotates_keys() {
    let app = spawn_app().await;
    let tombola = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tombola"))
            .args(args)
            .env("DATABASE_URL", &app.db_url)
            .env("TOMBOLA_DB_CONNECTIONS", "2")
            .output()
            .expect("the tombola binary runs")
    };
    let created = tombola(&[
        "keys",
        "create",
        "--role",
        "organizer",
        "--organizer",
        "org-z",
    ]);
    assert!(created.status.success(), "{created:?}");
    let key = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let listed = tombola(&["keys", "list", "--organizer", "org-z"]);
    let lines: Vec<serde_json::Value> = String::from_utf8(listed.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["key_id"], key_id(&key).to_string());

    let rotated = tombola(&[
        "keys",
        "rotate",
        &key_id(&key).to_string(),
        "--grace-hours",
        "0",
    ]);
    assert!(rotated.status.success(), "{rotated:?}");
    let new_key = String::from_utf8(rotated.stdout).unwrap().trim().to_owned();
    assert!(uncached(&app).verify(&new_key).await.is_ok());
    assert!(uncached(&app).verify(&key).await.is_err());
    let revoked = tombola(&["keys", "revoke", &key_id(&new_key).to_string()]);
    assert!(revoked.status.success());
    assert!(uncached(&app).verify(&new_key).await.is_err());
    assert!(!tombola(&["keys", "revoke", &key_id(&new_key).to_string()])
        .status
        .success());
    app.teardown().await;
}

#[tokio::test]
async fn whoami_names_the_calling_key_and_needs_one() {
    let app = spawn_app().await;
    let response = app.get("/v1/whoami", &app.client_key).await;
    let body = expect_json(response, StatusCode::OK).await;
    assert_eq!(body["key_id"], key_id(&app.client_key).to_string());
    assert_eq!(body["role"], "client");
    assert!(body["organizer_id"].is_string());
    let response = app.http.get(app.url("/v1/whoami")).send().await.unwrap();
    expect_problem(response, StatusCode::UNAUTHORIZED, "unauthorized").await;
}

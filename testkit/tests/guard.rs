//! A test that panics still drops its database.

use std::sync::{Arc, Mutex};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};
use std::str::FromStr;
use tombola_testkit::{spawn_app, TestDb};

async fn exists(url: &str) -> bool {
    let options = PgConnectOptions::from_str(url).expect("a database URL");
    let name = options.get_database().expect("a database name").to_owned();
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .expect("connect to the server");
    let found: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&mut admin)
            .await
            .expect("look the database up");
    admin.close().await.expect("close");
    found
}

#[tokio::test]
async fn a_test_db_is_dropped_when_its_test_panics() {
    let url = Arc::new(Mutex::new(None));
    let seen = url.clone();
    let test = tokio::spawn(async move {
        let db = TestDb::new(1).await;
        *seen.lock().unwrap() = Some(db.url.clone());
        assert!(exists(&db.url).await);
        panic!("the test fails");
    });
    assert!(test.await.is_err(), "the test panicked");

    let url = url.lock().unwrap().clone().expect("the database was made");
    assert!(!exists(&url).await, "{url} is left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_app_is_stopped_and_its_database_dropped_when_its_test_panics() {
    let url = Arc::new(Mutex::new(None));
    let seen = url.clone();
    let test = tokio::spawn(async move {
        let app = spawn_app().await;
        *seen.lock().unwrap() = Some(app.db_url.clone());
        app.raffle_on_sale(serde_json::json!({})).await;
        panic!("the test fails");
    });
    assert!(test.await.is_err(), "the test panicked");

    let url = url.lock().unwrap().clone().expect("the app was started");
    assert!(!exists(&url).await, "{url} is left behind");
}

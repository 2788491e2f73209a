//! The one authenticated JSON request the HTTP benches send to set up and drive Tombola.

/// `POST url` with `key` as bearer token and `body` as JSON; the answer's JSON, or the
/// status and body as the error when it is not a success.
pub async fn post(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let response = client
        .post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status();
    let text = response.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("POST {url}: {status} {text}"));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

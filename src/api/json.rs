//! JSON request bodies: problem+json rejections, and JSON's one number type.
//!
//! JSON has no integer type: `6655.0` and `6655` are the same number to JSON Schema (and so
//! to schemathesis and to generated clients), but serde refuses a fraction where an integer
//! goes. A body that fails only that way is read again with every integral float made an
//! integer; valid bodies pay nothing for it.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap};
use serde::de::DeserializeOwned;
use serde_json::{Number, Value};

use super::error::ApiError;

/// A JSON body (`application/json` or `application/*+json`) whose rejections are
/// problem+json.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        if !is_json(request.headers()) {
            return Err(ApiError::UnsupportedMediaType);
        }
        let body = Bytes::from_request(request, state).await?;
        parse(&body).map(ApiJson)
    }
}

/// A JSON body that may be left out entirely (then the defaults apply).
pub fn optional_json<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse(body)
}

/// Parses `body` as `T`, reading an integral float (`2.0`) as the integer it equals.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = match serde_json::from_slice(body) {
        Ok(value) => return Ok(value),
        Err(error) => error,
    };
    if first.classify() != serde_json::error::Category::Data {
        return Err(ApiError::body(first));
    }
    let mut value: Value = serde_json::from_slice(body).map_err(ApiError::body)?;
    if !integral_floats_to_integers(&mut value) {
        return Err(ApiError::body(first));
    }
    serde_json::from_value(value).map_err(ApiError::body)
}

/// Turns every float with no fraction that an `i64` or `u64` holds into that integer;
/// says whether it changed anything.
fn integral_floats_to_integers(value: &mut Value) -> bool {
    match value {
        Value::Number(number) if number.is_f64() => {
            let float = number.as_f64().unwrap_or(f64::NAN);
            let integer = if float.fract() != 0.0 {
                None
            } else if (-9.223_372_036_854_776e18..0.0).contains(&float) {
                Some(Number::from(float as i64))
            } else if (0.0..1.844_674_407_370_955_2e19).contains(&float) {
                Some(Number::from(float as u64))
            } else {
                None
            };
            integer.map(|integer| *number = integer).is_some()
        }
        Value::Array(items) => items.iter_mut().fold(false, |changed, item| {
            integral_floats_to_integers(item) | changed
        }),
        Value::Object(fields) => fields.values_mut().fold(false, |changed, field| {
            integral_floats_to_integers(field) | changed
        }),
        _ => false,
    }
}

/// `application/json` or a `+json` type, as axum's `Json` accepts.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json") || subtype.to_ascii_lowercase().ends_with("+json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    struct Refund {
        amount: i64,
        numbers: Vec<u32>,
    }

    #[test]
    fn integral_floats_are_the_integers_they_equal() {
        let refund: Refund = parse(br#"{"amount": 6655.0, "numbers": [1.0, 2]}"#).unwrap();
        assert_eq!(
            refund,
            Refund {
                amount: 6655,
                numbers: vec![1, 2]
            }
        );
        let negative: Refund = parse(br#"{"amount": -5.0, "numbers": []}"#).unwrap();
        assert_eq!(negative.amount, -5);
    }

    #[test]
    fn fractions_and_out_of_range_floats_stay_refused() {
        for body in [
            r#"{"amount": 6655.5, "numbers": []}"#,
            r#"{"amount": 1e300, "numbers": []}"#,
            r#"{"amount": 1, "numbers": [-1.0]}"#,
            r#"{"amount": 1, "numbers": [4294967296.0]}"#,
        ] {
            let error = parse::<Refund>(body.as_bytes()).unwrap_err();
            assert!(
                matches!(error, ApiError::InvalidRequest { .. }),
                "{body}: {error:?}"
            );
        }
        assert!(matches!(
            parse::<Refund>(b"{").unwrap_err(),
            ApiError::InvalidJson { .. }
        ));
    }

    #[test]
    fn json_media_types_are_recognised() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, value.parse().unwrap());
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/merge-patch+json"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}

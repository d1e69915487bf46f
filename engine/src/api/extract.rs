//! Request extractors that answer bad input with the API's JSON errors instead
//! of axum's plain-text rejections: JSON bodies, query strings and raw bodies
//! (with the size limit reported as 413).

use super::error::ApiError;
use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

/// A JSON body; unknown fields are refused by each body type's serde attributes.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(Json(v)),
            Err(rejection) => Err(json_error(rejection)),
        }
    }
}

fn json_error(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request(
            "malformed_json",
            format!("the body is not valid JSON: {}", inner(&e)),
        ),
        JsonRejection::JsonDataError(e) => ApiError::invalid(format!(
            "the body does not have the expected fields: {}",
            inner(&e)
        )),
        JsonRejection::BytesRejection(e) => bytes_error(e),
        other => ApiError::bad_request("bad_request", other.body_text()),
    }
}

fn bytes_error(e: BytesRejection) -> ApiError {
    if super::serve::timed_out(&e) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body did not arrive within http_body_timeout_ms",
        );
    }
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body is larger than this route accepts",
        )
    } else {
        ApiError::bad_request("bad_request", e.body_text())
    }
}

/// serde's message without axum's prefix ("Failed to deserialize …: ").
fn inner(e: &dyn std::error::Error) -> String {
    let mut cur: &dyn std::error::Error = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// A raw body, with the size limit answered as JSON 413.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(bytes_error)
    }
}

/// A JSON body that may be left out: an empty body is `T::default()`.
/// Unknown fields are refused by each body type's serde attributes.
pub struct JsonOrDefault<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for JsonOrDefault<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let RawBody(body) = RawBody::from_request(req, state).await?;
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(JsonOrDefault(T::default()));
        }
        serde_json::from_slice(&body)
            .map(JsonOrDefault)
            .map_err(|e| {
                ApiError::invalid(format!("the body does not have the expected fields: {e}"))
            })
    }
}

/// A query string.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("invalid query string: {}", inner(&e)),
                )
            })
    }
}

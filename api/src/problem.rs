//! Errors as `application/problem+json` (RFC 9457): the API's one error type, and the
//! extractors that turn axum's own rejections into it.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use sluice_common::Error as CommonError;

/// Everything a request can fail with. Database details are logged, never sent.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Syntactically bad input (malformed JSON, bad query parameter, bad cursor).
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed input that breaks a rule (unknown field, wrong type, out of range).
    #[error("{0}")]
    Unprocessable(String),
    /// No or unknown bearer token.
    #[error("a valid bearer token is required")]
    Unauthorized {
        /// A token was presented but is not one of ours.
        bad_token: bool,
    },
    /// The token's scope does not allow this.
    #[error("this action needs a token with the admin scope")]
    Forbidden,
    /// No such job, kind or route.
    #[error("{0}")]
    NotFound(String),
    /// Route exists, method does not.
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    /// The job's state does not allow the action.
    #[error("{0}")]
    Conflict(String),
    /// Not answered within `SLUICE_API_REQUEST_TIMEOUT`; the work may or may not have happened.
    #[error("the request took longer than the server's time limit; retry, with an idempotency key when enqueueing")]
    RequestTimeout,
    /// Body over the configured limit.
    #[error("{0}")]
    PayloadTooLarge(String),
    /// Body is not declared as JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The database is unreachable or overloaded; worth retrying.
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable,
    /// Anything else; details are in the server log.
    #[error("internal error; see the server log")]
    Internal,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn slug(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Unprocessable(_) => "invalid-input",
            ApiError::Unauthorized { .. } => "unauthorized",
            ApiError::Forbidden => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::MethodNotAllowed => "method-not-allowed",
            ApiError::Conflict(_) => "conflict",
            ApiError::RequestTimeout => "request-timeout",
            ApiError::PayloadTooLarge(_) => "payload-too-large",
            ApiError::UnsupportedMediaType(_) => "unsupported-media-type",
            ApiError::Unavailable => "unavailable",
            ApiError::Internal => "internal",
        }
    }
}

impl From<CommonError> for ApiError {
    fn from(err: CommonError) -> Self {
        match err {
            CommonError::Invalid(e) => ApiError::Unprocessable(e.to_string()),
            CommonError::NotFound(_) | CommonError::UnknownKind(_) => {
                ApiError::NotFound(err.to_string())
            }
            CommonError::InvalidTransition { .. } => ApiError::Conflict(err.to_string()),
            CommonError::Database(db) => db_error(db),
            CommonError::Migrate(e) => {
                tracing::error!(error = %e, "migration error");
                ApiError::Internal
            }
        }
    }
}

/// Logs a database error with its details and picks what the client may know.
pub fn db_error(err: sqlx::Error) -> ApiError {
    tracing::error!(error = %err, "database error");
    match err {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            ApiError::Unavailable
        }
        _ => ApiError::Internal,
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rej: JsonRejection) -> Self {
        let text = rej.body_text();
        match rej {
            JsonRejection::JsonSyntaxError(_) => ApiError::BadRequest(text),
            JsonRejection::JsonDataError(_) => ApiError::Unprocessable(text),
            JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                "expected a request with Content-Type: application/json".into(),
            ),
            JsonRejection::BytesRejection(_) if rej.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::PayloadTooLarge("the request body is over the size limit".into())
            }
            _ => ApiError::BadRequest(text),
        }
    }
}

/// A problem document body.
pub fn problem_body(status: StatusCode, slug: &str, detail: &str) -> serde_json::Value {
    json!({
        "type": format!("https://sluice.dev/problems/{slug}"),
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = problem_body(status, self.slug(), &self.to_string());
        let mut resp = (status, axum::Json(body)).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Unauthorized { bad_token } = self {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(if bad_token {
                    "Bearer realm=\"sluice\", error=\"invalid_token\""
                } else {
                    "Bearer realm=\"sluice\""
                }),
            );
        }
        resp
    }
}

/// `axum::Json` whose rejections are problem documents.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| ApiJson(v))
            .map_err(ApiError::from)
    }
}

/// Fallback for unknown routes.
pub async fn not_found() -> ApiError {
    ApiError::NotFound("no such route".into())
}

/// Fallback for known routes with the wrong method (counted under the route it matched).
pub async fn method_not_allowed(req: Request) -> ApiError {
    crate::note_matched_route(&req);
    ApiError::MethodNotAllowed
}

//! Errors as `application/problem+json` (RFC 9457): the API's one error type, and the
//! extractors that turn axum's own rejections into it.

use axum::{
    extract::{rejection::JsonRejection, FromRequest, Request},
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::de::DeserializeOwned;
use serde_json::json;
use sluice_common::{
    error::{classify, Failure},
    Error as CommonError,
};

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
    /// The service cannot take this now (shutting down, its queue full); worth retrying.
    #[error("the service is temporarily unavailable; retry later")]
    Unavailable,
    /// The database failed in a way worth retrying (a lost race, a terminated connection,
    /// a statement timeout): 503 with `Retry-After`, and readiness hears of it.
    #[error("the database is temporarily unavailable; retry later")]
    Database(Failure),
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
            ApiError::Unavailable | ApiError::Database(_) => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::Unavailable | ApiError::Database(_) => "unavailable",
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

/// Logs a database error with its details and picks what the client may know: anything
/// transient (SQLSTATE classes 08, 53, 40001/40P01, 57014, 57P01-03, pool timeouts) is a
/// 503 to retry, never a 500.
pub fn db_error(err: sqlx::Error) -> ApiError {
    match classify(&err) {
        Failure::Permanent => {
            tracing::error!(error = %err, "database error");
            ApiError::Internal
        }
        failure => {
            tracing::warn!(error = %err, ?failure, "transient database error");
            ApiError::Database(failure)
        }
    }
}

/// Seconds a client is told to wait before retrying a 503.
pub const RETRY_AFTER_SECS: &str = "1";

/// Marks a response answered with a transient database failure, for the readiness check.
#[derive(Debug, Clone, Copy)]
pub struct DatabaseTrouble(pub Failure);

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

/// A problem document as a response: `status`, `application/problem+json`, and the body
/// as pure-ASCII JSON (every non-ASCII character escaped as `\uXXXX`).
///
/// Why ASCII: the detail often quotes the client's own input (a kind, a path segment),
/// and `application/problem+json` carries no charset. Clients that guess one (Python's
/// `requests` does, for any JSON type but `application/json`) may pick a multi-byte
/// encoding such as Big5, in which a UTF-8 byte can swallow the backslash of a following
/// `\"`, and the document no longer parses (found by schemathesis: a kind `AA´企`).
/// Escaped, the bytes read the same in any ASCII-compatible encoding, and any JSON
/// parser gives back the exact text.
pub fn problem_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let text = body.to_string();
    let mut ascii = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            // Non-ASCII appears only inside JSON strings, where \u escapes are valid.
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{u:04x}"));
            }
        }
    }
    let mut resp = (status, ascii).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
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
        let mut resp = problem_response(status, &body);
        if let ApiError::Database(failure) = self {
            resp.extensions_mut().insert(DatabaseTrouble(failure));
        }
        let headers = resp.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
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

/// Rewrites any error response that is not JSON already (axum's own rejections of
/// a path segment that is not UTF-8, a body over the limit, the timeout layer's 408) into
/// one, keeping its status and using its text as the detail.
pub async fn problem_documents(req: Request, next: axum::middleware::Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    // Ours are problem documents already; a JSON body (`/health/ready`'s 503) is a
    // documented answer of its own.
    let is_json = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/problem+json") || v.starts_with(b"application/json")
    });
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    // axum's rejections are short texts; anything longer is cut, not buffered whole.
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let slug = match status {
        StatusCode::BAD_REQUEST => "bad-request",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid-input",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad-request",
        _ => "internal",
    };
    let mut out = problem_response(status, &problem_body(status, slug, &detail));
    let headers = out.headers_mut();
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            headers.append(name.clone(), value.clone());
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_problem_quoting_non_ascii_input_is_ascii_json_that_parses_back_to_the_exact_text() {
        let detail = "unknown kind \"AA´企\u{1f}😀\": no worker registered it";
        let resp = ApiError::NotFound(detail.into()).into_response();
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["detail"], detail);
        assert_eq!(v["status"], 404);
    }
}

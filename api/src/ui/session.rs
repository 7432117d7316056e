//! Signing in to the UI: a token typed into a form becomes a server-side session.
//!
//! - The session cookie (`sluice_ui_session`) holds 256 random bits; Postgres keeps only
//!   their SHA-256 ([`sluice_common::storage::insert_ui_session`]), with the digest of the
//!   token signed in with and the session's CSRF token. The cookie is `HttpOnly`,
//!   `SameSite=Strict`, `Path=/ui`, and `Secure` when the request came over https
//!   (directly, or through a proxy saying so with `X-Forwarded-Proto` / `Forwarded`).
//! - Each request looks the caller's name and scope up from the configured tokens by that
//!   digest, so a token removed from `SLUICE_API_TOKENS` ends its sessions.
//! - Sessions expire `SLUICE_UI_SESSION_TTL` after sign-in (by the database clock).
//! - Every form that changes something carries the session's CSRF token; the sign-in form
//!   itself carries a double-submit token from a short-lived cookie, so another site cannot
//!   sign a browser in to an attacker's session.

use axum::{
    extract::{FromRequestParts, Query, State},
    http::{header, request::Parts, HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    Extension, Form,
};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use sluice_common::storage;
use subtle::ConstantTimeEq;

use crate::{
    auth::{Principal, Scope},
    server::PeerAddr,
    state::AppState,
    ui::views::{self, UiError},
};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "sluice_ui_session";
/// Name of the sign-in form's double-submit cookie.
pub const SIGN_IN_COOKIE: &str = "sluice_ui_signin";

/// A signed-in operator, extracted from the session cookie. Pages and actions take it as
/// an argument; without a valid session the request is sent to the sign-in page.
#[derive(Debug, Clone)]
pub struct UiUser {
    /// Who (the token's name) and what they may do.
    pub principal: Principal,
    /// This session's CSRF token, put into every form.
    pub csrf: String,
    /// The session's id hash, to sign out.
    id_hash: Vec<u8>,
}

impl UiUser {
    /// May this user act (pause, retry, …)?
    pub fn can_act(&self) -> bool {
        self.principal.scope >= Scope::Admin
    }

    /// Refuses a form whose CSRF token is missing or not this session's.
    pub fn check_csrf(&self, presented: Option<&str>) -> Result<(), UiError> {
        match presented {
            Some(p) if bool::from(p.as_bytes().ct_eq(self.csrf.as_bytes())) => Ok(()),
            _ => Err(UiError::Csrf),
        }
    }

    /// Refuses callers whose token cannot act.
    pub fn require_admin(&self) -> Result<(), UiError> {
        if self.can_act() {
            Ok(())
        } else {
            Err(UiError::Forbidden(self.principal.scope))
        }
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the browser reached us over https (so cookies may be marked `Secure`).
pub fn is_https(parts_uri: &axum::http::Uri, headers: &HeaderMap) -> bool {
    if parts_uri.scheme_str() == Some("https") {
        return true;
    }
    let forwarded_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    let forwarded = headers
        .get(header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|first| {
            first.split(';').any(|kv| {
                kv.trim().split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("proto")
                        && v.trim_matches('"').eq_ignore_ascii_case("https")
                })
            })
        });
    forwarded_proto || forwarded
}

fn set_cookie(name: &str, value: &str, max_age_secs: u64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/ui; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// Where to go after signing in: only a path inside the UI, never another site.
pub fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n)
            if (n == "/ui" || n.starts_with("/ui/") || n.starts_with("/ui?"))
                && !n.contains("//")
                && !n.contains('\\')
                && !n.starts_with("/ui/sign-") =>
        {
            n
        }
        _ => "/ui",
    }
}

fn to_sign_in(parts: &Parts, reason: Option<&str>) -> Response {
    let next = if parts.method == axum::http::Method::GET {
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/ui".into())
    } else {
        "/ui".into()
    };
    let mut q: Vec<(&str, &str)> = vec![("next", safe_next(Some(&next)))];
    if let Some(r) = reason {
        q.push((r, "1"));
    }
    let query = serde_urlencoded::to_string(&q).unwrap_or_default();
    let mut resp = Redirect::to(&format!("/ui/sign-in?{query}")).into_response();
    if reason.is_some() {
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", 0, is_https(&parts.uri, &parts.headers)),
        );
    }
    resp
}

impl FromRequestParts<AppState> for UiUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(raw) = cookie(&parts.headers, SESSION_COOKIE).filter(|v| !v.is_empty()) else {
            return Err(to_sign_in(parts, None));
        };
        let id_hash = sha256(raw.as_bytes());
        let pool = state.client.pool();
        let session = storage::find_ui_session(pool, &id_hash)
            .await
            .map_err(|e| UiError::from(e).into_response())?;
        let Some(session) = session else {
            return Err(to_sign_in(parts, Some("expired")));
        };
        if session.expired {
            storage::delete_ui_session(pool, &id_hash)
                .await
                .map_err(|e| UiError::from(e).into_response())?;
            return Err(to_sign_in(parts, Some("expired")));
        }
        let principal = match &state.settings.tokens {
            None => Some(anonymous()),
            Some(tokens) => tokens.principal_by_digest(&session.token_digest),
        };
        let Some(principal) = principal else {
            // The token was removed from the configuration: the session ends with it.
            storage::delete_ui_session(pool, &id_hash)
                .await
                .map_err(|e| UiError::from(e).into_response())?;
            return Err(to_sign_in(parts, Some("expired")));
        };
        Ok(UiUser {
            principal,
            csrf: session.csrf,
            id_hash,
        })
    }
}

/// The caller when the API runs with `--insecure-no-auth`.
fn anonymous() -> Principal {
    Principal {
        name: "anonymous".into(),
        scope: Scope::Admin,
    }
}

/// Query of the sign-in page.
#[derive(Debug, Deserialize, Default)]
pub struct SignInQuery {
    /// Where to go afterwards (a UI path).
    next: Option<String>,
    /// Set when sent here because the session expired.
    expired: Option<String>,
    /// Set after signing out.
    signed_out: Option<String>,
}

/// `GET /ui/sign-in`: the form, with a fresh double-submit token.
pub async fn sign_in_page(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    query: Result<Query<SignInQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let notice = if q.expired.is_some() {
        Some("Your session has expired. Sign in again.")
    } else if q.signed_out.is_some() {
        Some("You are signed out.")
    } else {
        None
    };
    sign_in_response(
        &state,
        StatusCode::OK,
        safe_next(q.next.as_deref()),
        notice,
        None,
        is_https(&uri, &headers),
    )
}

fn sign_in_response(
    state: &AppState,
    status: StatusCode,
    next: &str,
    notice: Option<&str>,
    error: Option<&str>,
    secure: bool,
) -> Response {
    let token = random_hex();
    let page = views::sign_in(&token, next, notice, error, state.settings.tokens.is_none());
    let mut resp = (status, page).into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, &token, 3600, secure),
    );
    resp
}

/// Body of the sign-in form.
#[derive(Debug, Deserialize)]
pub struct SignInForm {
    /// The API token.
    #[serde(default)]
    token: String,
    /// The double-submit token.
    #[serde(default)]
    csrf: String,
    /// Where to go afterwards.
    #[serde(default)]
    next: String,
}

/// `POST /ui/sign-in`: checks the token and starts a session.
///
/// Failed attempts are limited per client address ([`crate::ui::throttle`]): past the
/// limit it answers 429 with `Retry-After` without looking at the token.
pub async fn sign_in(
    State(state): State<AppState>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    peer: Option<Extension<PeerAddr>>,
    form: Result<Form<SignInForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let secure = is_https(&uri, &headers);
    let peer = peer.map(|Extension(PeerAddr(ip))| ip);
    if let Err(wait) = state.sign_in_throttle.check(peer) {
        let next = form
            .as_ref()
            .map(|Form(f)| safe_next(Some(&f.next)).to_string())
            .unwrap_or_else(|_| "/ui".to_string());
        let mut resp = sign_in_response(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            &next,
            None,
            Some("Too many wrong tokens from this address. Wait a few seconds and try again."),
            secure,
        );
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        return resp;
    }
    let Ok(Form(form)) = form else {
        return sign_in_response(
            &state,
            StatusCode::BAD_REQUEST,
            "/ui",
            None,
            Some("The form could not be read. Try again."),
            secure,
        );
    };
    let next = safe_next(Some(&form.next)).to_string();
    let expected = cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !bool::from(form.csrf.as_bytes().ct_eq(expected.as_bytes())) {
        return sign_in_response(
            &state,
            StatusCode::FORBIDDEN,
            &next,
            None,
            Some("The sign-in form was stale (or cookies are blocked). Try again."),
            secure,
        );
    }
    let presented = form.token.trim();
    let digest = match &state.settings.tokens {
        None => sha256(b""),
        Some(tokens) => {
            if tokens.principal(presented.as_bytes()).is_none() {
                state.sign_in_throttle.failed(peer);
                return sign_in_response(
                    &state,
                    StatusCode::UNAUTHORIZED,
                    &next,
                    None,
                    Some("That token is not valid."),
                    secure,
                );
            }
            sha256(presented.as_bytes())
        }
    };
    let session = random_hex();
    let csrf = random_hex();
    let pool = state.client.pool();
    let ttl = state.settings.ui.session_ttl;
    let stored = async {
        storage::delete_expired_ui_sessions(pool).await?;
        storage::insert_ui_session(
            pool,
            &sha256(session.as_bytes()),
            &digest,
            &csrf,
            ttl.as_secs_f64(),
        )
        .await
    }
    .await;
    if let Err(e) = stored {
        return UiError::from(e).into_response();
    }
    let mut resp = Redirect::to(&next).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &session, ttl.as_secs(), secure),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(SIGN_IN_COOKIE, "", 0, secure),
    );
    resp
}

/// Body of forms that only carry the CSRF token (sign out).
#[derive(Debug, Deserialize)]
pub struct CsrfForm {
    /// The session's CSRF token.
    csrf: Option<String>,
}

/// `POST /ui/sign-out`: ends the session.
pub async fn sign_out(
    State(state): State<AppState>,
    user: UiUser,
    uri: axum::http::Uri,
    headers: HeaderMap,
    form: Result<Form<CsrfForm>, axum::extract::rejection::FormRejection>,
) -> Result<Response, UiError> {
    let form = form.map(|Form(f)| f).map_err(|_| UiError::Csrf)?;
    user.check_csrf(form.csrf.as_deref())?;
    storage::delete_ui_session(state.client.pool(), &user.id_hash).await?;
    let mut resp = Redirect::to("/ui/sign-in?signed_out=1").into_response();
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", 0, is_https(&uri, &headers)),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_sign_in_only_paths_inside_the_ui_are_followed() {
        assert_eq!(safe_next(Some("/ui/jobs/5")), "/ui/jobs/5");
        assert_eq!(safe_next(Some("/ui?refresh=off")), "/ui?refresh=off");
        for evil in [
            "https://evil",
            "//evil",
            "/ui//evil",
            "/ui\\evil",
            "/uix",
            "/ui/sign-out",
        ] {
            assert_eq!(safe_next(Some(evil)), "/ui", "{evil}");
        }
    }

    #[test]
    fn https_is_recognised_directly_and_through_a_proxy() {
        let uri: axum::http::Uri = "/ui".parse().unwrap_or_default();
        let mut h = HeaderMap::new();
        assert!(!is_https(&uri, &h));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(is_https(&uri, &h));
        let mut h = HeaderMap::new();
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=1.2.3.4;proto=https"),
        );
        assert!(is_https(&uri, &h));
    }
}

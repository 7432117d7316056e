#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The operator web UI in process (`tower::ServiceExt::oneshot`) against a fresh database
//! per test: every page and action, sign-in and sessions, scopes, CSRF, escaping.

use std::time::Duration;

use axum::{
    body::Body,
    http::{header, HeaderMap, Request, StatusCode},
    Router,
};
use serde_json::{json, Value};
use sluice_api::{auth::Tokens, config::Settings, router, state::AppState, ui::UiSettings};
use sluice_common::{JobClient, NewJob};
use sqlx::PgPool;
use tower::ServiceExt;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const READ: &str = "rd-secret";
const ADM: &str = "adm-secret";
const ENQ: &str = "enq-secret";

/// The router, and a guard stopping the state's background tasks at the end.
struct TestApp {
    router: Router,
    state: AppState,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.state.background.cancel();
    }
}

fn app_with(pool: PgPool, ui: UiSettings) -> TestApp {
    let settings = Settings {
        tokens: Some(
            Tokens::parse(&format!("read:viewer:{READ},admin:ops:{ADM},enqueue:{ENQ}")).unwrap(),
        ),
        ui,
        ..Settings::default()
    };
    let state = AppState::new(pool, settings);
    TestApp {
        router: router(state.clone()),
        state,
    }
}

fn app(pool: PgPool) -> TestApp {
    app_with(pool, UiSettings::default())
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect()
    }
}

/// A signed-in browser: its session cookie and the session's CSRF token.
#[derive(Debug, Clone)]
struct Session {
    cookie: String,
    csrf: String,
}

async fn send(app: &TestApp, req: Request<Body>) -> Reply {
    let resp = app.router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(app: &TestApp, uri: &str, session: Option<&Session>) -> Reply {
    let mut req = Request::builder().method("GET").uri(uri);
    if let Some(s) = session {
        req = req.header(header::COOKIE, &s.cookie);
    }
    send(app, req.body(Body::empty()).unwrap()).await
}

async fn post_form(app: &TestApp, uri: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
    let mut req = Request::builder()
        .method("POST")
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    let body = serde_urlencoded::to_string(form).unwrap();
    send(app, req.body(Body::from(body)).unwrap()).await
}

/// Posts a form with this session's cookie and CSRF token.
async fn act(app: &TestApp, s: &Session, uri: &str, fields: &[(&str, &str)]) -> Reply {
    let mut form = vec![("csrf", s.csrf.as_str())];
    form.extend_from_slice(fields);
    post_form(app, uri, Some(&s.cookie), &form).await
}

/// The value of the first `name="csrf"` hidden field of a page.
fn csrf_field(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    html[at..].split('"').next().unwrap().to_string()
}

fn cookie_value(set_cookie: &[String], name: &str) -> Option<String> {
    set_cookie
        .iter()
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c[name.len() + 1..].split(';').next().unwrap().to_string())
}

async fn try_sign_in(app: &TestApp, token: &str) -> Reply {
    let page = get(app, "/ui/sign-in", None).await;
    assert_eq!(page.status, StatusCode::OK);
    let pre = cookie_value(&page.set_cookies(), "sluice_ui_signin").unwrap();
    let csrf = csrf_field(&page.body);
    assert_eq!(pre, csrf);
    post_form(
        app,
        "/ui/sign-in",
        Some(&format!("sluice_ui_signin={pre}")),
        &[("token", token), ("csrf", &csrf), ("next", "/ui")],
    )
    .await
}

async fn sign_in(app: &TestApp, token: &str) -> Session {
    let r = try_sign_in(app, token).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let value = cookie_value(&r.set_cookies(), "sluice_ui_session").unwrap();
    let cookie = format!("sluice_ui_session={value}");
    let overview = get(
        app,
        "/ui",
        Some(&Session {
            cookie: cookie.clone(),
            csrf: String::new(),
        }),
    )
    .await;
    assert_eq!(overview.status, StatusCode::OK, "{}", overview.body);
    Session {
        cookie,
        csrf: csrf_field(&overview.body),
    }
}

async fn enqueue(pool: &PgPool, kind: &str, payload: Value) -> i64 {
    JobClient::new(pool.clone())
        .enqueue(&NewJob::new(kind, payload))
        .await
        .unwrap()
        .job
        .id
}

async fn set_state(pool: &PgPool, id: i64, state: &str) {
    let finished = matches!(state, "completed" | "failed" | "cancelled");
    sqlx::query(
        "UPDATE jobs SET state = $2, finished_at = CASE WHEN $3 THEN now() END,
                leased_by = CASE WHEN $2 = 'processing' THEN 'host-a:42' END,
                leased_at = CASE WHEN $2 = 'processing' THEN now() END,
                lease_expires_at = CASE WHEN $2 = 'processing' THEN now() + interval '5 minutes' END,
                lease_token = CASE WHEN $2 = 'processing' THEN 1 END,
                attempts = CASE WHEN $2 = 'failed' THEN 3 ELSE attempts END,
                last_error = CASE WHEN $2 = 'failed' THEN 'connection refused' END
          WHERE id = $1",
    )
    .bind(id)
    .bind(state)
    .bind(finished)
    .execute(pool)
    .await
    .unwrap();
}

async fn job_state(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn audit_rows(pool: &PgPool) -> Vec<(String, String, String, Option<String>, Value)> {
    sqlx::query_as("SELECT actor, action, target, reason, details FROM audit_log ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn snapshot(pool: &PgPool) -> Vec<(i64, String, i32)> {
    sqlx::query_as("SELECT id, state, attempts FROM jobs ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn signing_in_sets_an_http_only_same_site_strict_session_cookie_secure_behind_https(
    pool: PgPool,
) {
    let app = app(pool.clone());
    let r = try_sign_in(&app, ADM).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/ui");
    let cookie = r
        .set_cookies()
        .into_iter()
        .find(|c| c.starts_with("sluice_ui_session="))
        .unwrap();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain http: {cookie}");
    // The session row keeps digests only, never the cookie or the token.
    let (id_hash, digest): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT id_hash, token_digest FROM ui_sessions")
            .fetch_one(&pool)
            .await
            .unwrap();
    let value = cookie_value(&[cookie], "sluice_ui_session").unwrap();
    assert_ne!(id_hash, value.as_bytes());
    assert_ne!(digest, ADM.as_bytes());

    // Behind a proxy that says the browser used https, the cookies are Secure.
    let page = send(
        &app,
        Request::get("/ui/sign-in")
            .header("x-forwarded-proto", "https")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    let pre = cookie_value(&page.set_cookies(), "sluice_ui_signin").unwrap();
    assert!(page.set_cookies()[0].contains("Secure"));
    let body = serde_urlencoded::to_string([("token", ADM), ("csrf", &pre)]).unwrap();
    let r = send(
        &app,
        Request::post("/ui/sign-in")
            .header("x-forwarded-proto", "https")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::COOKIE, format!("sluice_ui_signin={pre}"))
            .body(Body::from(body))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r
        .set_cookies()
        .iter()
        .all(|c| c.contains("Secure") && c.contains("HttpOnly")));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_sign_in_page_has_a_token_field_and_a_sign_in_button_and_refuses_wrong_tokens(
    pool: PgPool,
) {
    let app = app(pool.clone());
    let page = get(&app, "/ui/sign-in", None).await;
    assert!(page.body.contains("<label for=\"token\">Token</label>"));
    assert!(page
        .body
        .contains("<button type=\"submit\">Sign in</button>"));
    let r = try_sign_in(&app, "not-a-token").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.body.contains("That token is not valid"));
    assert!(cookie_value(&r.set_cookies(), "sluice_ui_session").is_none());
    // Without the sign-in form's own token (another site posting it) nothing happens.
    let r = post_form(&app, "/ui/sign-in", None, &[("token", ADM), ("csrf", "x")]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert!(cookie_value(&r.set_cookies(), "sluice_ui_session").is_none());
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM ui_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn ten_wrong_tokens_from_one_address_make_sign_in_wait_even_for_the_right_one(pool: PgPool) {
    let app = app(pool.clone());
    // A good sign-in first: success leaves the allowance untouched.
    sign_in(&app, ADM).await;
    for i in 0..10 {
        let r = try_sign_in(&app, "not-a-token").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let r = try_sign_in(&app, ADM).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(r.body.contains("Too many wrong tokens"), "{}", r.body);
    let wait: u64 = r.headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    assert!(cookie_value(&r.set_cookies(), "sluice_ui_session").is_none());
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM ui_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 1, "only the first sign-in made a session");
    // Another API process (its own state) counts its own attempts.
    let other = app_with(pool.clone(), UiSettings::default());
    sign_in(&other, ADM).await;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn pages_without_a_session_redirect_to_sign_in_and_return_there_afterwards(pool: PgPool) {
    let app = app(pool.clone());
    let id = enqueue(&pool, "email.send", json!({})).await;
    for page in [
        "/ui",
        "/ui/jobs?state=queued",
        &format!("/ui/jobs/{id}"),
        "/ui/audit",
    ] {
        let r = get(&app, page, None).await;
        assert_eq!(r.status, StatusCode::SEE_OTHER, "{page}");
        assert!(r.location().starts_with("/ui/sign-in?next="), "{page}");
    }
    let r = get(&app, &format!("/ui/jobs/{id}"), None).await;
    let next = r.location().split("next=").nth(1).unwrap();
    let next: String = serde_urlencoded::from_str::<Vec<(String, String)>>(&format!("n={next}"))
        .unwrap()[0]
        .1
        .clone();
    let page = get(&app, "/ui/sign-in", None).await;
    let pre = cookie_value(&page.set_cookies(), "sluice_ui_signin").unwrap();
    let r = post_form(
        &app,
        "/ui/sign-in",
        Some(&format!("sluice_ui_signin={pre}")),
        &[("token", READ), ("csrf", &pre), ("next", &next)],
    )
    .await;
    assert_eq!(r.location(), format!("/ui/jobs/{id}"));
    // A forged cookie is no session.
    let forged = Session {
        cookie: "sluice_ui_session=deadbeef".into(),
        csrf: String::new(),
    };
    assert_eq!(
        get(&app, "/ui", Some(&forged)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn every_page_renders_for_a_read_token_under_a_strict_content_security_policy(pool: PgPool) {
    let app = app(pool.clone());
    let id = enqueue(&pool, "email.send", json!({"to": "a@b"})).await;
    let failed = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, failed, "failed").await;
    let s = sign_in(&app, READ).await;
    for page in [
        "/ui".to_string(),
        "/ui?refresh=off".into(),
        "/ui/jobs".into(),
        "/ui/jobs?state=failed&kind=email.send".into(),
        format!("/ui/jobs/{id}"),
        format!("/ui/jobs/{failed}"),
        "/ui/audit".into(),
    ] {
        let r = get(&app, &page, Some(&s)).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
        let csp = r.headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(
            csp.contains("default-src 'self'") && csp.contains("script-src 'self'"),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"));
        assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert!(!r.body.contains("<script"), "{page}: no script at all");
        assert!(
            !r.body.contains("style=\""),
            "{page}: no inline style (CSP)"
        );
        assert!(
            !r.body.contains("http://") && !r.body.contains("https://"),
            "{page}: nothing external"
        );
        assert!(r.body.contains("Signed in as <strong>viewer</strong>"));
        // Read-only: no action buttons anywhere.
        for button in [
            ">Pause<",
            ">Resume<",
            ">Retry<",
            ">Cancel<",
            ">Release<",
            "matching jobs",
        ] {
            assert!(
                !r.body.contains(button),
                "{page} offers {button} to a read token"
            );
        }
    }
    let overview = get(&app, "/ui", Some(&s)).await;
    assert!(overview.body.contains("http-equiv=\"refresh\""));
    assert!(!get(&app, "/ui?refresh=off", Some(&s))
        .await
        .body
        .contains("http-equiv"));
    let css = get(&app, "/ui/static/ui.css", None).await;
    assert_eq!(css.status, StatusCode::OK);
    assert!(css.headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/css"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_read_token_sees_everything_but_every_action_is_403_and_changes_nothing(pool: PgPool) {
    let app = app(pool.clone());
    let queued = enqueue(&pool, "email.send", json!({})).await;
    let failed = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, failed, "failed").await;
    let running = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, running, "processing").await;
    let before = snapshot(&pool).await;
    let s = sign_in(&app, READ).await;
    let up_to = failed.to_string();
    let attempts: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/ui/kinds/pause".into(), vec![("kind", "email.send")]),
        ("/ui/kinds/resume".into(), vec![("kind", "email.send")]),
        (format!("/ui/jobs/{failed}/retry"), vec![]),
        (format!("/ui/jobs/{queued}/cancel"), vec![]),
        (format!("/ui/jobs/{running}/release"), vec![]),
        (
            "/ui/jobs/bulk".into(),
            vec![
                ("action", "retry"),
                ("state", "failed"),
                ("up_to_id", &up_to),
            ],
        ),
        (
            "/ui/jobs/bulk".into(),
            vec![("action", "cancel"), ("up_to_id", &up_to)],
        ),
    ];
    for (uri, fields) in &attempts {
        let r = act(&app, &s, uri, fields).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri}: {}", r.body);
        assert!(r.body.contains("read scope"), "{uri}");
    }
    let r = get(&app, "/ui/jobs/bulk?action=retry&state=failed", Some(&s)).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&pool).await, before);
    assert!(audit_rows(&pool).await.is_empty());
    let paused: i64 = sqlx::query_scalar("SELECT count(*) FROM job_kinds WHERE paused")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(paused, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_post_without_the_sessions_csrf_token_is_refused_and_changes_nothing(pool: PgPool) {
    let app = app(pool.clone());
    let failed = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, failed, "failed").await;
    let before = snapshot(&pool).await;
    let s = sign_in(&app, ADM).await;
    let other = sign_in(&app, ADM).await;
    assert_ne!(s.csrf, other.csrf);
    let retry = format!("/ui/jobs/{failed}/retry");
    for (uri, form) in [
        (retry.as_str(), vec![]),
        (retry.as_str(), vec![("csrf", "")]),
        (retry.as_str(), vec![("csrf", other.csrf.as_str())]),
        ("/ui/kinds/pause", vec![("kind", "email.send")]),
        ("/ui/sign-out", vec![]),
    ] {
        let r = post_form(&app, uri, Some(&s.cookie), &form).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{uri} {form:?}");
        assert!(r.body.contains("security token"));
    }
    // Not a form at all (a cross-site fetch with a JSON body).
    let r = send(
        &app,
        Request::post(&retry)
            .header(header::COOKIE, &s.cookie)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(snapshot(&pool).await, before);
    assert!(audit_rows(&pool).await.is_empty());
    // With the token it works, and the session is still good.
    let r = act(&app, &s, &retry, &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(job_state(&pool, failed).await, "queued");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_expired_session_is_sent_back_to_sign_in_and_deleted(pool: PgPool) {
    let app = app_with(
        pool.clone(),
        UiSettings {
            session_ttl: Duration::ZERO,
            ..UiSettings::default()
        },
    );
    let r = try_sign_in(&app, ADM).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let value = cookie_value(&r.set_cookies(), "sluice_ui_session").unwrap();
    let s = Session {
        cookie: format!("sluice_ui_session={value}"),
        csrf: String::new(),
    };
    let r = get(&app, "/ui/jobs", Some(&s)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert!(r.location().starts_with("/ui/sign-in?"), "{}", r.location());
    assert!(r.location().contains("expired=1"));
    assert!(r.set_cookies().iter().any(|c| c.contains("Max-Age=0")));
    let page = get(&app, r.location(), None).await;
    assert!(page.body.contains("Your session has expired"));
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM ui_sessions")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0);
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn signing_out_ends_the_session_on_the_server(pool: PgPool) {
    let app = app(pool.clone());
    let s = sign_in(&app, ADM).await;
    let r = act(&app, &s, "/ui/sign-out", &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), "/ui/sign-in?signed_out=1");
    // The old cookie, replayed, is no longer a session.
    assert_eq!(
        get(&app, "/ui", Some(&s)).await.status,
        StatusCode::SEE_OTHER
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_session_ends_when_its_token_is_removed_from_the_configuration(pool: PgPool) {
    let app = app(pool.clone());
    let s = sign_in(&app, ADM).await;
    // The API restarts with another token list: the stored session stays, its token not.
    let settings = Settings {
        tokens: Some(Tokens::parse("admin:new:other-secret").unwrap()),
        ..Settings::default()
    };
    let state = AppState::new(pool.clone(), settings);
    let restarted = TestApp {
        router: router(state.clone()),
        state,
    };
    assert_eq!(
        get(&restarted, "/ui", Some(&s)).await.status,
        StatusCode::SEE_OTHER
    );
    // The same list again: a session survives a restart.
    let again = app_with(pool.clone(), UiSettings::default());
    let s2 = sign_in(&again, ADM).await;
    let restarted = app_with(pool.clone(), UiSettings::default());
    assert_eq!(
        get(&restarted, "/ui", Some(&s2)).await.status,
        StatusCode::OK
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn hostile_payloads_kinds_and_errors_are_shown_escaped_never_run(pool: PgPool) {
    let app = app(pool.clone());
    let kind = "<script>alert('kind')</script>";
    let id = JobClient::new(pool.clone())
        .enqueue(
            &NewJob::new(kind, json!({"html": "<script>alert('payload')</script>", "q": "\"><img src=x onerror=alert(1)>"}))
                .idempotency_key("<b>key</b>"),
        )
        .await
        .unwrap()
        .job
        .id;
    sqlx::query("UPDATE jobs SET state = 'failed', finished_at = now(), last_error = '<iframe src=//evil>' WHERE id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let s = sign_in(&app, ADM).await;
    let r = act(
        &app,
        &s,
        "/ui/kinds/pause",
        &[("kind", kind), ("reason", "<svg onload=alert(2)>")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    let overview_after = r.location().to_string();
    let encoded_kind = serde_urlencoded::to_string([("kind", kind)]).unwrap();
    for page in [
        "/ui".to_string(),
        overview_after,
        format!("/ui/jobs?{encoded_kind}"),
        format!("/ui/jobs?{encoded_kind}&state=failed"),
        format!("/ui/jobs/{id}"),
        "/ui/audit".into(),
        format!("/ui/jobs/bulk?action=retry&{encoded_kind}"),
        "/ui/jobs?q=%3Cscript%3Enope%3C%2Fscript%3E".into(),
    ] {
        let r = get(&app, &page, Some(&s)).await;
        assert_eq!(r.status, StatusCode::OK, "{page}: {}", r.body);
        for raw in ["<script", "<img", "<iframe", "<svg onload", "<b>key"] {
            assert!(!r.body.contains(raw), "{page} contains raw {raw}");
        }
        assert!(
            r.body.contains("&lt;script&gt;") || r.body.contains("&lt;iframe"),
            "{page}"
        );
    }
    let job = get(&app, &format!("/ui/jobs/{id}"), Some(&s)).await;
    assert!(job
        .body
        .contains("&lt;script&gt;alert('payload')&lt;/script&gt;"));
    assert!(job.body.contains("&lt;iframe src=//evil&gt;"));
    assert!(job.body.contains("&lt;b&gt;key&lt;/b&gt;"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_admin_pauses_and_resumes_a_kind_audited_under_the_tokens_name(pool: PgPool) {
    let app = app(pool.clone());
    let a = enqueue(&pool, "email.send", json!({})).await;
    let b = enqueue(&pool, "email.send", json!({})).await;
    let other = enqueue(&pool, "report.build", json!({})).await;
    let s = sign_in(&app, ADM).await;
    let overview = get(&app, "/ui", Some(&s)).await;
    assert!(overview.body.contains("aria-label=\"Pause email.send\""));
    let r = act(
        &app,
        &s,
        "/ui/kinds/pause",
        &[("kind", "email.send"), ("reason", "smtp down")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert!(r.location().starts_with("/ui?done=pause"));
    assert_eq!(job_state(&pool, a).await, "paused");
    assert_eq!(job_state(&pool, b).await, "paused");
    assert_eq!(job_state(&pool, other).await, "queued");
    let page = get(&app, r.location(), Some(&s)).await;
    assert!(page.body.contains("Kind paused"));
    assert!(page.body.contains("Kind email.send: 2 jobs."));
    assert!(page.body.contains("aria-label=\"Resume email.send\""));
    let r = act(&app, &s, "/ui/kinds/resume", &[("kind", "email.send")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(job_state(&pool, a).await, "queued");
    let rows = audit_rows(&pool).await;
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0].0.as_str(), rows[0].1.as_str(), rows[0].2.as_str()),
        ("ops", "pause", "kind:email.send")
    );
    assert_eq!(rows[0].3.as_deref(), Some("smtp down"));
    assert_eq!((rows[1].0.as_str(), rows[1].1.as_str()), ("ops", "resume"));
    // Paused with the runbook's SQL: the kind is not paused, but Resume is offered.
    sqlx::query("UPDATE jobs SET state='paused' WHERE state='queued' AND kind='report.build'")
        .execute(&pool)
        .await
        .unwrap();
    let overview = get(&app, "/ui", Some(&s)).await;
    assert!(overview.body.contains("aria-label=\"Resume report.build\""));
    let r = act(&app, &s, "/ui/kinds/resume", &[("kind", "report.build")]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(job_state(&pool, other).await, "queued");
    let r = act(&app, &s, "/ui/kinds/pause", &[("kind", "no.such.kind")]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let audit = get(&app, "/ui/audit", Some(&s)).await;
    assert!(audit.body.contains("smtp down") && audit.body.contains(">ops<"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn an_admin_retries_cancels_and_releases_jobs_like_the_api_does(pool: PgPool) {
    let app = app(pool.clone());
    let failed = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, failed, "failed").await;
    let running = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, running, "processing").await;
    let queued = enqueue(&pool, "email.send", json!({})).await;
    let s = sign_in(&app, ADM).await;

    let page = get(&app, &format!("/ui/jobs/{failed}"), Some(&s)).await;
    assert!(page.body.contains(">Retry</button>") && !page.body.contains(">Release</button>"));
    assert!(page.body.contains("connection refused"));
    let r = act(
        &app,
        &s,
        &format!("/ui/jobs/{failed}/retry"),
        &[("reason", "fixed the smtp host")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.location(), format!("/ui/jobs/{failed}?done=retry"));
    let (state, attempts): (String, i32) =
        sqlx::query_as("SELECT state, attempts FROM jobs WHERE id = $1")
            .bind(failed)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!((state.as_str(), attempts), ("queued", 0));
    let page = get(&app, r.location(), Some(&s)).await;
    assert!(page.body.contains("Job queued to run again."));
    assert!(
        page.body.contains("fixed the smtp host"),
        "the job page shows its history"
    );

    let page = get(&app, &format!("/ui/jobs/{running}"), Some(&s)).await;
    assert!(page.body.contains("host-a:42"));
    assert!(page.body.contains(">Release</button>") && page.body.contains(">Cancel</button>"));
    let r = act(&app, &s, &format!("/ui/jobs/{running}/release"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(job_state(&pool, running).await, "queued");
    let r = act(&app, &s, &format!("/ui/jobs/{queued}/cancel"), &[]).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(job_state(&pool, queued).await, "cancelled");
    // The same rules as the API: a queued job cannot be released.
    let r = act(&app, &s, &format!("/ui/jobs/{failed}/release"), &[]).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(r.body.contains("cannot release"));
    let r = act(&app, &s, "/ui/jobs/999999/retry", &[]).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let rows = audit_rows(&pool).await;
    let actions: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("ops", "retry", format!("job:{failed}").as_str()),
            ("ops", "release", format!("job:{running}").as_str()),
            ("ops", "cancel", format!("job:{queued}").as_str()),
        ]
    );
    assert_eq!(rows[1].4["leased_by"], "host-a:42");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bulk_retry_shows_the_count_first_and_then_retries_only_the_jobs_it_counted(pool: PgPool) {
    let app = app(pool.clone());
    let mut failed = Vec::new();
    for _ in 0..3 {
        let id = enqueue(&pool, "email.send", json!({})).await;
        set_state(&pool, id, "failed").await;
        failed.push(id);
    }
    let elsewhere = enqueue(&pool, "report.build", json!({})).await;
    set_state(&pool, elsewhere, "failed").await;
    let s = sign_in(&app, ADM).await;
    let list = get(&app, "/ui/jobs?state=failed&kind=email.send", Some(&s)).await;
    assert!(list.body.contains("Retry matching jobs…"));
    assert!(
        !list.body.contains("Cancel matching jobs…"),
        "failed jobs cannot be cancelled"
    );
    let confirm = get(
        &app,
        "/ui/jobs/bulk?action=retry&state=failed&kind=email.send",
        Some(&s),
    )
    .await;
    assert_eq!(confirm.status, StatusCode::OK);
    assert!(
        confirm
            .body
            .contains("<strong>3</strong> failed jobs of kind email.send will be retried"),
        "{}",
        confirm.body
    );
    assert!(confirm.body.contains(">Retry 3 jobs</button>"));
    let up_to = confirm
        .body
        .split("name=\"up_to_id\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    // One more fails after the operator saw the count: it is not swept up unseen.
    let late = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, late, "failed").await;
    let r = act(
        &app,
        &s,
        "/ui/jobs/bulk",
        &[
            ("action", "retry"),
            ("state", "failed"),
            ("kind", "email.send"),
            ("up_to_id", &up_to),
            ("reason", "smtp fixed"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    for id in &failed {
        assert_eq!(job_state(&pool, *id).await, "queued");
    }
    assert_eq!(job_state(&pool, late).await, "failed");
    assert_eq!(job_state(&pool, elsewhere).await, "failed");
    let page = get(&app, r.location(), Some(&s)).await;
    assert!(
        page.body.contains("Bulk retry done. 3 jobs changed."),
        "{}",
        page.body
    );
    let rows = audit_rows(&pool).await;
    assert_eq!(rows.len(), 1, "one audit row per bulk action");
    let (actor, action, target, reason, details) = &rows[0];
    assert_eq!((actor.as_str(), action.as_str()), ("ops", "bulk_retry"));
    assert_eq!(target, "filter:state=failed,kind=email.send");
    assert_eq!(reason.as_deref(), Some("smtp fixed"));
    assert_eq!(details["count"], 3);
    assert_eq!(details["ids"], json!(failed));
    // Without the confirmation's count the action is refused.
    let r = act(
        &app,
        &s,
        "/ui/jobs/bulk",
        &[("action", "retry"), ("state", "failed")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(job_state(&pool, late).await, "failed");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn bulk_cancel_by_kind_cancels_its_unfinished_jobs_and_leaves_the_rest(pool: PgPool) {
    let app = app(pool.clone());
    let queued = enqueue(&pool, "email.send", json!({})).await;
    let running = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, running, "processing").await;
    let done = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, done, "completed").await;
    let other = enqueue(&pool, "report.build", json!({})).await;
    let s = sign_in(&app, ADM).await;
    let confirm = get(
        &app,
        "/ui/jobs/bulk?action=cancel&kind=email.send",
        Some(&s),
    )
    .await;
    assert!(confirm.body.contains("<strong>2</strong> queued or paused or processing jobs of kind email.send will be cancelled"), "{}", confirm.body);
    let up_to = confirm
        .body
        .split("name=\"up_to_id\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let r = act(
        &app,
        &s,
        "/ui/jobs/bulk",
        &[
            ("action", "cancel"),
            ("kind", "email.send"),
            ("up_to_id", &up_to),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.body);
    assert_eq!(job_state(&pool, queued).await, "cancelled");
    assert_eq!(job_state(&pool, running).await, "cancelled");
    assert_eq!(job_state(&pool, done).await, "completed");
    assert_eq!(job_state(&pool, other).await, "queued");
    let rows = audit_rows(&pool).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, "bulk_cancel");
    assert_eq!(rows[0].4["count"], 2);
    // Nothing left to cancel: the page says so and offers no button.
    let confirm = get(
        &app,
        "/ui/jobs/bulk?action=cancel&kind=email.send",
        Some(&s),
    )
    .await;
    assert!(confirm
        .body
        .contains("No queued or paused or processing jobs of kind email.send to cancel."));
    assert!(!confirm.body.contains("type=\"submit\">Cancel"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn find_goes_to_the_job_by_id_or_idempotency_key(pool: PgPool) {
    let app = app(pool.clone());
    let id = JobClient::new(pool.clone())
        .enqueue(&NewJob::new("email.send", json!({})).idempotency_key("order-77"))
        .await
        .unwrap()
        .job
        .id;
    // The same key in two kinds: both are listed.
    for kind in ["a.one", "b.two"] {
        JobClient::new(pool.clone())
            .enqueue(&NewJob::new(kind, json!({})).idempotency_key("shared"))
            .await
            .unwrap();
    }
    let s = sign_in(&app, READ).await;
    let r = get(&app, &format!("/ui/jobs?q={id}"), Some(&s)).await;
    assert_eq!(
        (r.status, r.location()),
        (StatusCode::SEE_OTHER, format!("/ui/jobs/{id}").as_str())
    );
    let r = get(&app, "/ui/jobs?q=order-77", Some(&s)).await;
    assert_eq!(r.location(), format!("/ui/jobs/{id}"));
    let r = get(&app, "/ui/jobs?q=shared", Some(&s)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.contains(">a.one<") && r.body.contains(">b.two<"));
    let r = get(&app, "/ui/jobs?q=shared&kind=b.two", Some(&s)).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let r = get(&app, "/ui/jobs?q=nothing-here", Some(&s)).await;
    assert!(r.body.contains("No job has id or idempotency key"));
    assert_eq!(
        get(&app, "/ui/jobs/123456", Some(&s)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/ui/jobs/abc", Some(&s)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&app, "/ui/jobs?state=running", Some(&s)).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_jobs_list_pages_by_keyset_newest_first(pool: PgPool) {
    let app = app(pool.clone());
    let batch: Vec<NewJob> = (0..60)
        .map(|i| NewJob::new("email.send", json!({"n": i})))
        .collect();
    let ids: Vec<i64> = JobClient::new(pool.clone())
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.job.id)
        .collect();
    let s = sign_in(&app, READ).await;
    let first = get(&app, "/ui/jobs?kind=email.send", Some(&s)).await;
    let rows = first.body.matches("<a href=\"/ui/jobs/").count();
    assert_eq!(rows, 50);
    assert!(first.body.contains(&format!("/ui/jobs/{}\"", ids[59])));
    assert!(!first.body.contains(&format!("/ui/jobs/{}\"", ids[9])));
    let next = first.body.split("rel=\"next\"").next().unwrap();
    let href = next
        .rsplit("href=\"")
        .next()
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .replace("&amp;", "&");
    assert!(href.contains(&format!("before={}", ids[10])), "{href}");
    let second = get(&app, &href, Some(&s)).await;
    assert_eq!(second.body.matches("<a href=\"/ui/jobs/").count(), 10);
    assert!(second.body.contains(&format!("/ui/jobs/{}\"", ids[0])));
    assert!(!second.body.contains("rel=\"next\""));
    assert!(second.body.contains(">First page<"));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_overview_shows_counts_the_oldest_wait_and_the_last_hour_per_kind(pool: PgPool) {
    let app = app(pool.clone());
    for _ in 0..3 {
        enqueue(&pool, "email.send", json!({})).await;
    }
    sqlx::query("UPDATE jobs SET run_at = now() - interval '10 minutes', created_at = now() - interval '10 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    for state in ["completed", "completed", "failed"] {
        let id = enqueue(&pool, "report.build", json!({})).await;
        set_state(&pool, id, state).await;
    }
    let fresh = enqueue(&pool, "report.build", json!({})).await;
    let s = sign_in(&app, READ).await;
    let r = get(&app, "/ui", Some(&s)).await;
    let body = &r.body;
    // The backed-up kind comes first and is marked.
    let email = body.find(">email.send</a>").unwrap();
    let report = body.find(">report.build</a>").unwrap();
    assert!(email < report);
    assert!(body.contains("<tr class=\"backlog\">"));
    assert!(body.contains(">10m "), "oldest wait of about ten minutes");
    assert!(body.contains("report.build: 2 completed and 1 failed in the last hour"));
    assert!(body.contains("All kinds: 2 completed and 1 failed in the last hour"));
    assert!(body.contains("/ui/jobs?kind=email.send&amp;state=queued\">3<"));
    assert!(body.contains("<svg class=\"chart\""));
    let _ = fresh;
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_read_token_may_use_the_json_get_routes_but_not_create_or_act(pool: PgPool) {
    let app = app(pool.clone());
    let id = enqueue(&pool, "email.send", json!({})).await;
    let call = |method: &str, uri: String, token: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(if method == "POST" {
                r#"{"kind":"k","payload":{}}"#
            } else {
                ""
            }))
            .unwrap()
    };
    for uri in [
        "/v1/jobs".to_string(),
        format!("/v1/jobs/{id}"),
        "/v1/stats".into(),
        "/v1/kinds".into(),
    ] {
        assert_eq!(
            send(&app, call("GET", uri.clone(), READ)).await.status,
            StatusCode::OK,
            "{uri}"
        );
    }
    assert_eq!(
        send(&app, call("POST", "/v1/jobs".into(), READ))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, call("POST", format!("/v1/jobs/{id}/cancel"), READ))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, call("POST", "/v1/jobs".into(), ENQ))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(job_state(&pool, id).await, "queued");
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_trace_id_links_to_the_configured_tracing_ui(pool: PgPool) {
    let app = app_with(
        pool.clone(),
        UiSettings {
            trace_url: Some("https://tempo.example/trace/{trace_id}".into()),
            ..UiSettings::default()
        },
    );
    let id = JobClient::new(pool.clone())
        .enqueue(&NewJob::new("email.send", json!({})).traceparent(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        )))
        .await
        .unwrap()
        .job
        .id;
    let s = sign_in(&app, READ).await;
    let page = get(&app, &format!("/ui/jobs/{id}"), Some(&s)).await;
    assert!(page
        .body
        .contains("href=\"https://tempo.example/trace/4bf92f3577b34da6a3ce929d0e0e4736\""));
    let plain = app_with(pool.clone(), UiSettings::default());
    let s = sign_in(&plain, READ).await;
    let page = get(&plain, &format!("/ui/jobs/{id}"), Some(&s)).await;
    assert!(page
        .body
        .contains("<code>4bf92f3577b34da6a3ce929d0e0e4736</code>"));
    assert!(!page.body.contains("tempo"));
}

#[test]
fn bad_ui_configuration_exits_2_naming_the_variable() {
    for (var, value) in [
        ("SLUICE_UI_TRACE_URL", "javascript:alert(1)//{trace_id}"),
        ("SLUICE_UI_TRACE_URL", "https://tempo/trace/"),
        ("SLUICE_UI_SESSION_TTL", "forever"),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice-api"))
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("SLUICE_API_TOKENS", "admin:x")
            .env(var, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(var), "{var}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_chart_is_served_from_the_last_computation_and_refreshed_in_the_background(
    pool: PgPool,
) {
    let app = app_with(
        pool.clone(),
        UiSettings {
            chart_cache_ttl: Duration::ZERO,
            ..UiSettings::default()
        },
    );
    let first = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, first, "completed").await;
    let s = sign_in(&app, READ).await;
    let page = get(&app, "/ui", Some(&s)).await;
    assert!(page.body.contains("All kinds: 1 completed and 0 failed"));
    let second = enqueue(&pool, "email.send", json!({})).await;
    set_state(&pool, second, "completed").await;
    // A later page shows the second completion once the background refresh has run.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let page = get(&app, "/ui", Some(&s)).await;
        assert_eq!(page.status, StatusCode::OK);
        if page.body.contains("All kinds: 2 completed and 0 failed") {
            break;
        }
        assert!(
            page.body.contains("All kinds: 1 completed"),
            "stale, never wrong"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "the chart was never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

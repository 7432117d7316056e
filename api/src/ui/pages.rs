//! The pages: overview, jobs list, one job, audit log, bulk confirmation.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
    Extension,
};
use maud::{html, Markup};
use serde::Deserialize;
use sluice_common::{
    storage::{self, BulkAction, BulkFilter, KindCounts, MAX_BULK},
    Job, JobState,
};

use crate::{
    state::AppState,
    ui::{
        chart::{self, ChartCache},
        session::UiUser,
        views::{self, count, jobs_href, layout, state_badge, time, Frame, Section, UiError},
    },
};

/// Rows per jobs page.
pub const PAGE_SIZE: i64 = 50;
/// Rows per audit page.
pub const AUDIT_PAGE_SIZE: i64 = 100;

/// Notices shown after an action, keyed by a fixed code (never text from the URL).
fn notice(done: Option<&str>) -> Option<&'static str> {
    Some(match done? {
        "pause" => "Kind paused: its queued jobs are held and new ones wait until it is resumed.",
        "resume" => "Kind resumed: its jobs are queued again.",
        "retry" => "Job queued to run again.",
        "cancel" => "Job cancelled.",
        "release" => "Job released: it is queued again and its old lease is void.",
        "bulk_retry" => "Bulk retry done.",
        "bulk_cancel" => "Bulk cancel done.",
        _ => return None,
    })
}

fn notice_markup(done: Option<&str>, extra: Option<String>) -> Markup {
    html! {
        @if let Some(n) = notice(done) {
            p.notice role="status" { (n) @if let Some(e) = extra { " " (e) } }
        }
    }
}

/// Query of the overview.
#[derive(Debug, Deserialize, Default)]
pub struct OverviewQuery {
    /// `off` stops the page reloading itself.
    refresh: Option<String>,
    /// Notice code of the action just done.
    done: Option<String>,
    /// Kind the action was on.
    kind: Option<String>,
    /// Jobs the action moved.
    jobs: Option<u64>,
}

/// One row of the overview table.
#[derive(Debug)]
struct KindRow {
    /// Kind name.
    kind: String,
    /// Paused through the API/CLI/UI.
    paused_kind: bool,
    /// Counts of unfinished and failed jobs.
    counts: KindCounts,
    /// Seconds the oldest runnable queued job has waited.
    oldest_secs: Option<f64>,
}

/// `GET /ui`.
pub async fn overview(
    State(state): State<AppState>,
    Extension(cache): Extension<Arc<ChartCache>>,
    user: UiUser,
    query: Result<Query<OverviewQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let pool = state.client.pool();
    let (kinds, counts, oldest, now, chart_at) = tokio::try_join!(
        storage::list_kinds(pool),
        storage::count_unfinished_jobs_by_kind(pool),
        storage::find_oldest_runnable_by_kind(pool),
        storage::fetch_database_now(pool),
        cache.get(pool, state.settings.ui.chart_cache_ttl),
    )?;
    let chart = chart_at.chart.clone();
    let mut rows: BTreeMap<String, KindRow> = BTreeMap::new();
    for k in kinds {
        rows.insert(
            k.kind.clone(),
            KindRow {
                counts: KindCounts {
                    kind: k.kind.clone(),
                    ..KindCounts::default()
                },
                kind: k.kind,
                paused_kind: k.paused,
                oldest_secs: None,
            },
        );
    }
    for c in counts {
        let row = rows.entry(c.kind.clone()).or_insert_with(|| KindRow {
            kind: c.kind.clone(),
            paused_kind: false,
            counts: KindCounts::default(),
            oldest_secs: None,
        });
        row.counts = c;
    }
    for (kind, at) in oldest {
        if let Some(row) = rows.get_mut(&kind) {
            row.oldest_secs = Some((now - at).num_milliseconds() as f64 / 1000.0);
        }
    }
    let mut rows: Vec<KindRow> = rows.into_values().collect();
    // Most backed-up first: the kind an operator is looking for is the top row.
    rows.sort_by(|a, b| {
        b.oldest_secs
            .unwrap_or(-1.0)
            .total_cmp(&a.oldest_secs.unwrap_or(-1.0))
            .then_with(|| a.kind.cmp(&b.kind))
    });
    let refresh_off = q.refresh.as_deref() == Some("off");
    let frame = Frame {
        title: "Overview",
        section: Section::Overview,
        user: Some(&user),
        refresh_secs: (!refresh_off).then_some(state.settings.ui.refresh_every.as_secs().max(1)),
    };
    let totals = rows.iter().fold((0i64, 0i64, 0i64, 0i64), |t, r| {
        (
            t.0 + r.counts.queued,
            t.1 + r.counts.processing,
            t.2 + r.counts.paused,
            t.3 + r.counts.failed,
        )
    });
    let worst = rows.first().filter(|r| r.oldest_secs.is_some());
    let extra = match (&q.kind, q.jobs) {
        (Some(k), Some(n)) => Some(format!("Kind {k}: {} jobs.", count(n as i64))),
        _ => None,
    };
    let content = html! {
        (notice_markup(q.done.as_deref(), extra))
        section.summary aria-label="Totals" {
            div.stat { span.n { (count(totals.0)) } span.l { "queued" } }
            div.stat { span.n { (count(totals.1)) } span.l { "processing" } }
            div.stat { span.n { (count(totals.2)) } span.l { "paused" } }
            div.stat { span.n { (count(totals.3)) } span.l { "failed" } }
            div.stat {
                span.n { @if let Some(w) = worst { (views::age(w.oldest_secs.unwrap_or(0.0))) } @else { "—" } }
                span.l { "oldest wait" @if let Some(w) = worst { " (" (w.kind) ")" } }
            }
        }
        section aria-labelledby="throughput" {
            h2 id="throughput" { "Last hour, all kinds" }
            p.legend {
                span.key-ok { "completed" } " " span.key-fail { "failed" }
                " per minute; now is on the right. As of " (chart_at.as_of.format("%H:%M:%S UTC")) "."
            }
            (chart::svg(&chart.total, 600, 60, "All kinds"))
        }
        p.refresh {
            @if refresh_off {
                "Auto-refresh is off. " a href="/ui" { "Turn auto-refresh on" }
            } @else {
                "This page refreshes every " (state.settings.ui.refresh_every.as_secs()) " seconds. "
                a href="/ui?refresh=off" { "Stop auto-refresh" }
            }
        }
        section aria-labelledby="kinds" {
            h2 id="kinds" { "Kinds" }
            @if rows.is_empty() {
                p { "No jobs and no kinds yet." }
            } @else {
                div.table-wrap {
                    table {
                        caption { "Per kind, the longest-waiting first" }
                        thead { tr {
                            th scope="col" { "Kind" }
                            th scope="col" { "Status" }
                            th scope="col" .num { "Queued" }
                            th scope="col" .num { "Processing" }
                            th scope="col" .num { "Paused" }
                            th scope="col" .num { "Failed" }
                            th scope="col" .num { "Oldest queued" }
                            th scope="col" { "Last hour" }
                            @if user.can_act() { th scope="col" { "Action" } }
                        } }
                        tbody {
                            @for r in &rows {
                                @let chart_row = chart.by_kind.get(&r.kind).cloned().unwrap_or_default();
                                tr.backlog[r.oldest_secs.is_some_and(|s| s >= 60.0)] {
                                    th scope="row" { a href=(jobs_href(&[("kind", &r.kind)])) { (r.kind) } }
                                    td { @if r.paused_kind { span.badge.state-paused { "paused" } } @else { span.badge.state-active { "active" } } }
                                    td.num { a href=(jobs_href(&[("kind", &r.kind), ("state", "queued")])) { (count(r.counts.queued)) } }
                                    td.num { a href=(jobs_href(&[("kind", &r.kind), ("state", "processing")])) { (count(r.counts.processing)) } }
                                    td.num { a href=(jobs_href(&[("kind", &r.kind), ("state", "paused")])) { (count(r.counts.paused)) } }
                                    td.num { a href=(jobs_href(&[("kind", &r.kind), ("state", "failed")])) { (count(r.counts.failed)) } }
                                    td.num { @if let Some(s) = r.oldest_secs { (views::age(s)) } @else { "—" } }
                                    td.chart-cell {
                                        (chart::svg(&chart_row, 120, 24, &r.kind))
                                        span.totals { (count(chart_row.completed_total())) " ok, " (count(chart_row.failed_total())) " failed" }
                                    }
                                    @if user.can_act() {
                                        td {
                                            // Resume is also offered for jobs paused with the runbook's
                                            // UPDATE, which leaves the kind itself unpaused.
                                            @for (action, label, show) in [
                                                ("pause", "Pause", !r.paused_kind),
                                                ("resume", "Resume", r.paused_kind || r.counts.paused > 0),
                                            ] {
                                                @if show {
                                                    form.inline method="post" action=(format!("/ui/kinds/{action}")) {
                                                        input type="hidden" name="csrf" value=(user.csrf);
                                                        input type="hidden" name="kind" value=(r.kind);
                                                        button type="submit" aria-label=(format!("{label} {}", r.kind)) { (label) }
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&frame, content).into_response())
}

/// Query of the jobs list.
#[derive(Debug, Deserialize, Default)]
pub struct JobsQuery {
    /// State filter (empty = any).
    state: Option<String>,
    /// Kind filter (empty = any).
    kind: Option<String>,
    /// Keyset: jobs with a smaller id.
    before: Option<String>,
    /// Find: a job id or an idempotency key.
    q: Option<String>,
    /// Notice code of the bulk action just done.
    done: Option<String>,
    /// Jobs the bulk action changed.
    changed: Option<u64>,
    /// Jobs the bulk action skipped because they were busy.
    skipped: Option<u64>,
}

fn parse_state(raw: Option<&str>) -> Result<Option<JobState>, UiError> {
    match raw.map(str::trim).filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(s) => s
            .parse::<JobState>()
            .map(Some)
            .map_err(|e| UiError::BadRequest(format!("state: {e}"))),
    }
}

fn non_empty(raw: Option<&str>) -> Option<&str> {
    raw.map(str::trim).filter(|s| !s.is_empty())
}

fn jobs_table(jobs: &[Job], caption: &str) -> Markup {
    html! {
        div.table-wrap {
            table {
                caption { (caption) }
                thead { tr {
                    th scope="col" .num { "ID" }
                    th scope="col" { "Kind" }
                    th scope="col" { "State" }
                    th scope="col" .num { "Attempts" }
                    th scope="col" { "Run at" }
                    th scope="col" { "Updated" }
                    th scope="col" { "Last error" }
                } }
                tbody {
                    @for j in jobs {
                        tr {
                            td.num { a href=(format!("/ui/jobs/{}", j.id)) { (j.id) } }
                            td { (j.kind) }
                            td { (state_badge(j.state)) }
                            td.num { (j.attempts) " / " (j.max_attempts) }
                            td { (time(j.run_at)) }
                            td { (time(j.updated_at)) }
                            td.error-cell { @if let Some(e) = &j.last_error { (truncate(e, 120)) } }
                        }
                    }
                }
            }
        }
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// `GET /ui/jobs`: filter, find, keyset pages, bulk buttons.
pub async fn jobs(
    State(state): State<AppState>,
    user: UiUser,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = query.map_err(|e| UiError::BadRequest(e.body_text()))?;
    let job_state = parse_state(q.state.as_deref())?;
    let kind = non_empty(q.kind.as_deref()).map(str::to_string);
    if kind.as_deref().is_some_and(|k| k.contains('\0')) {
        return Err(UiError::BadRequest("kind holds a NUL character".into()));
    }
    let before = match non_empty(q.before.as_deref()) {
        None => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| UiError::BadRequest(format!("before={b:?} is not a job id")))?,
        ),
    };
    let pool = state.client.pool();
    let kinds = storage::list_kinds(pool).await?;
    let kind_names: Vec<String> = kinds.iter().map(|k| k.kind.clone()).collect();

    let find = non_empty(q.q.as_deref()).map(str::to_string);
    let mut found: Option<Vec<Job>> = None;
    if let Some(needle) = &find {
        if needle.contains('\0') {
            return Err(UiError::BadRequest(
                "the search holds a NUL character".into(),
            ));
        }
        if let Ok(id) = needle.trim_start_matches('#').parse::<i64>() {
            if storage::find_job(pool, id).await?.is_some() {
                return Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response());
            }
        }
        let search_kinds = match &kind {
            Some(k) => vec![k.clone()],
            None => kind_names.clone(),
        };
        let jobs = storage::find_jobs_by_idempotency_key(pool, &search_kinds, needle).await?;
        if jobs.len() == 1 {
            return Ok(Redirect::to(&format!("/ui/jobs/{}", jobs[0].id)).into_response());
        }
        found = Some(jobs);
    }

    let jobs = if found.is_none() {
        storage::list_jobs(pool, job_state, kind.as_deref(), before, PAGE_SIZE).await?
    } else {
        Vec::new()
    };
    let state_str = job_state.map(JobState::as_str).unwrap_or("");
    let kind_str = kind.as_deref().unwrap_or("");
    let frame = Frame {
        title: "Jobs",
        section: Section::Jobs,
        user: Some(&user),
        refresh_secs: None,
    };
    let filter_text = match (job_state, &kind) {
        (None, None) => "All jobs".to_string(),
        (Some(s), None) => format!("{} jobs", s.as_str()),
        (None, Some(k)) => format!("Jobs of kind {k}"),
        (Some(s), Some(k)) => format!("{} jobs of kind {k}", s.as_str()),
    };
    let bulk_retry = BulkFilter {
        action: BulkAction::Retry,
        state: job_state,
        kind: kind.clone(),
        up_to_id: None,
    };
    let bulk_cancel = BulkFilter {
        action: BulkAction::Cancel,
        ..bulk_retry.clone()
    };
    let bulk_extra = q.changed.map(|n| {
        let mut t = format!("{} jobs changed.", count(n as i64));
        if let Some(s) = q.skipped.filter(|s| *s > 0) {
            t.push_str(&format!(
                " {} were busy and left alone; run it again to take them.",
                count(s as i64)
            ));
        }
        t
    });
    let content = html! {
        (notice_markup(q.done.as_deref(), bulk_extra))
        div.toolbar {
            form.filters method="get" action="/ui/jobs" role="search" aria-label="Filter jobs" {
                div.field {
                    label for="f-state" { "State" }
                    select id="f-state" name="state" {
                        option value="" selected[job_state.is_none()] { "any" }
                        @for s in JobState::ALL {
                            option value=(s.as_str()) selected[job_state == Some(s)] { (s.as_str()) }
                        }
                    }
                }
                div.field {
                    label for="f-kind" { "Kind" }
                    select id="f-kind" name="kind" {
                        option value="" selected[kind.is_none()] { "any" }
                        @for k in &kind_names {
                            option value=(k) selected[kind.as_deref() == Some(k.as_str())] { (k) }
                        }
                        @if let Some(k) = &kind {
                            @if !kind_names.contains(k) { option value=(k) selected { (k) } }
                        }
                    }
                }
                button type="submit" { "Filter" }
            }
            form.find method="get" action="/ui/jobs" role="search" aria-label="Find a job" {
                div.field {
                    label for="f-q" { "Job id or idempotency key" }
                    input id="f-q" name="q" type="search" value=(find.as_deref().unwrap_or(""));
                }
                @if let Some(k) = &kind { input type="hidden" name="kind" value=(k); }
                button type="submit" { "Find" }
            }
        }
        @if let Some(found) = &found {
            @if found.is_empty() {
                p.error role="alert" { "No job has id or idempotency key " q { (find.as_deref().unwrap_or("")) } "." }
            } @else {
                (jobs_table(found, &format!("Jobs with idempotency key {}", find.as_deref().unwrap_or(""))))
            }
        } @else {
            @if user.can_act() && (bulk_retry.states().is_some() || bulk_cancel.states().is_some()) {
                div.bulk {
                    @for (f, label) in [(&bulk_retry, "Retry matching jobs…"), (&bulk_cancel, "Cancel matching jobs…")] {
                        @if f.states().is_some() {
                            form.inline method="get" action="/ui/jobs/bulk" {
                                input type="hidden" name="action" value=(if f.action == BulkAction::Retry { "retry" } else { "cancel" });
                                input type="hidden" name="state" value=(state_str);
                                input type="hidden" name="kind" value=(kind_str);
                                button type="submit" { (label) }
                            }
                        }
                    }
                }
            }
            @if jobs.is_empty() {
                p { "No jobs match." }
            } @else {
                (jobs_table(&jobs, &format!("{filter_text}, newest first")))
            }
            nav.pages aria-label="Pages" {
                @if before.is_some() {
                    a href=(jobs_href(&[("state", state_str), ("kind", kind_str)])) { "First page" }
                }
                @if jobs.len() as i64 == PAGE_SIZE {
                    @if let Some(last) = jobs.last() {
                        a href=(jobs_href(&[("state", state_str), ("kind", kind_str), ("before", &last.id.to_string())])) rel="next" { "Next page" }
                    }
                }
            }
        }
    };
    Ok(layout(&frame, content).into_response())
}

/// Query of one job's page.
#[derive(Debug, Deserialize, Default)]
pub struct JobQuery {
    /// Notice code of the action just done.
    done: Option<String>,
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

/// `GET /ui/jobs/{id}`.
pub async fn job(
    State(state): State<AppState>,
    user: UiUser,
    Path(raw): Path<String>,
    query: Result<Query<JobQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let id: i64 = raw
        .parse()
        .map_err(|_| UiError::NotFound(format!("{raw:?} is not a job id")))?;
    let pool = state.client.pool();
    let Some(job) = storage::find_job(pool, id).await? else {
        return Err(UiError::NotFound(format!(
            "Job {id} does not exist (it may have been deleted by retention)."
        )));
    };
    let history = storage::list_audit_log_for_target(pool, &format!("job:{id}"), 50).await?;
    let payload = serde_json::to_string_pretty(&job.payload).unwrap_or_default();
    let trace = job.traceparent.as_deref().and_then(trace_id);
    let trace_href = trace.and_then(|t| {
        state
            .settings
            .ui
            .trace_url
            .as_ref()
            .map(|tpl| tpl.replace("{trace_id}", t))
    });
    let title = format!("Job {id}");
    let frame = Frame {
        title: &title,
        section: Section::Jobs,
        user: Some(&user),
        refresh_secs: None,
    };
    let actions: Vec<(&str, &str, &str)> = [
        (
            matches!(job.state, JobState::Failed | JobState::Cancelled),
            "retry",
            "Retry",
            "Run it again from scratch (attempts reset).",
        ),
        (
            job.state == JobState::Processing,
            "release",
            "Release",
            "Take it back from its worker and queue it again now.",
        ),
        (
            matches!(
                job.state,
                JobState::Queued | JobState::Paused | JobState::Processing
            ),
            "cancel",
            "Cancel",
            "Stop it for good; a running attempt is told to stop.",
        ),
    ]
    .into_iter()
    .filter(|(ok, ..)| *ok)
    .map(|(_, a, l, h)| (a, l, h))
    .collect();
    let opt_time =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(time).unwrap_or_else(|| "—".into());
    let content = html! {
        (notice_markup(q.done.as_deref(), None))
        div.job-grid {
            section.card aria-labelledby="facts" {
                h2 id="facts" { "Details" }
                dl.facts {
                    dt { "Kind" } dd { a href=(jobs_href(&[("kind", &job.kind)])) { (job.kind) } }
                    dt { "State" } dd { (state_badge(job.state)) }
                    dt { "Attempts" } dd { (job.attempts) " of " (job.max_attempts) }
                    dt { "Priority" } dd { (job.priority) }
                    dt { "Idempotency key" } dd { @if let Some(k) = &job.idempotency_key { code { (k) } } @else { "—" } }
                    dt { "Leased by" } dd { @if let Some(w) = &job.leased_by { code { (w) } } @else { "—" } }
                    dt { "Leased at" } dd { (opt_time(job.leased_at)) }
                    dt { "Lease expires" } dd { (opt_time(job.lease_expires_at)) }
                    dt { "Run at" } dd { (time(job.run_at)) }
                    dt { "Created" } dd { (time(job.created_at)) }
                    dt { "Updated" } dd { (time(job.updated_at)) }
                    dt { "Finished" } dd { (opt_time(job.finished_at)) }
                    dt { "Trace id" } dd {
                        @match (trace, &trace_href) {
                            (Some(t), Some(href)) => a href=(href) rel="noreferrer noopener" target="_blank" { code { (t) } },
                            (Some(t), None) => code { (t) },
                            _ => "—",
                        }
                    }
                }
            }
            section.card aria-labelledby="act" {
                h2 id="act" { "Actions" }
                @if !user.can_act() {
                    p { "You are signed in with a read-only token: you can look, not act." }
                } @else if actions.is_empty() {
                    p { "A " (job.state.as_str()) " job has no actions." }
                } @else {
                    @for (action, label, help) in &actions {
                        form.action method="post" action=(format!("/ui/jobs/{id}/{action}")) {
                            input type="hidden" name="csrf" value=(user.csrf);
                            label for=(format!("reason-{action}")) { "Reason for " (label.to_lowercase()) " (optional, for the audit log)" }
                            input id=(format!("reason-{action}")) name="reason" type="text" maxlength="500";
                            p.hint { (help) }
                            button type="submit" { (label) }
                        }
                    }
                }
            }
        }
        @if let Some(e) = &job.last_error {
            section aria-labelledby="err" {
                h2 id="err" { "Last error" }
                pre.error-text { (e) }
            }
        }
        section aria-labelledby="payload" {
            h2 id="payload" { "Payload" }
            pre.payload { code { (payload) } }
        }
        section aria-labelledby="history" {
            h2 id="history" { "Operator actions on this job" }
            @if history.is_empty() {
                p { "None." }
            } @else {
                (audit_table(&history))
            }
        }
    };
    Ok(layout(&frame, content).into_response())
}

fn target_link(target: &str) -> Markup {
    if let Some(id) = target
        .strip_prefix("job:")
        .filter(|i| i.parse::<i64>().is_ok())
    {
        html! { a href=(format!("/ui/jobs/{id}")) { (target) } }
    } else if let Some(kind) = target.strip_prefix("kind:") {
        html! { a href=(jobs_href(&[("kind", kind)])) { (target) } }
    } else {
        html! { (target) }
    }
}

fn audit_table(rows: &[sluice_common::model::AuditEntry]) -> Markup {
    html! {
        div.table-wrap {
            table {
                caption { "Newest first" }
                thead { tr {
                    th scope="col" { "When" }
                    th scope="col" { "Who" }
                    th scope="col" { "Action" }
                    th scope="col" { "Target" }
                    th scope="col" { "Reason" }
                    th scope="col" { "Details" }
                } }
                tbody {
                    @for a in rows {
                        tr {
                            td { (time(a.at)) }
                            td { (a.actor) }
                            td { (a.action) }
                            td { (target_link(&a.target)) }
                            td { @if let Some(r) = &a.reason { (r) } }
                            td.details { code { (truncate(&a.details.to_string(), 300)) } }
                        }
                    }
                }
            }
        }
    }
}

/// Query of the audit page.
#[derive(Debug, Deserialize, Default)]
pub struct AuditQuery {
    /// Keyset: rows with a smaller id.
    before: Option<String>,
}

/// `GET /ui/audit`.
pub async fn audit(
    State(state): State<AppState>,
    user: UiUser,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let before = match non_empty(q.before.as_deref()) {
        None => None,
        Some(b) => Some(
            b.parse::<i64>()
                .map_err(|_| UiError::BadRequest(format!("before={b:?} is not an audit row id")))?,
        ),
    };
    let rows = storage::list_audit_log_before(state.client.pool(), before, AUDIT_PAGE_SIZE).await?;
    let frame = Frame {
        title: "Audit log",
        section: Section::Audit,
        user: Some(&user),
        refresh_secs: None,
    };
    let content = html! {
        p { "Every pause, resume, retry, cancel, release and bulk action, from the API, the CLI and this UI." }
        @if rows.is_empty() {
            p { "No operator actions yet." }
        } @else {
            (audit_table(&rows))
        }
        nav.pages aria-label="Pages" {
            @if before.is_some() { a href="/ui/audit" { "Newest" } }
            @if rows.len() as i64 == AUDIT_PAGE_SIZE {
                @if let Some(last) = rows.last() {
                    a href=(format!("/ui/audit?before={}", last.id)) rel="next" { "Older" }
                }
            }
        }
    };
    Ok(layout(&frame, content).into_response())
}

/// Query of the bulk confirmation page (and body of the bulk action).
#[derive(Debug, Deserialize, Default)]
pub struct BulkQuery {
    /// `retry` or `cancel`.
    pub action: Option<String>,
    /// State filter.
    pub state: Option<String>,
    /// Kind filter.
    pub kind: Option<String>,
}

/// The bulk filter a query or form names.
pub fn bulk_filter(
    action: Option<&str>,
    state: Option<&str>,
    kind: Option<&str>,
    up_to_id: Option<i64>,
) -> Result<BulkFilter, UiError> {
    let action = match action {
        Some("retry") => BulkAction::Retry,
        Some("cancel") => BulkAction::Cancel,
        other => {
            return Err(UiError::BadRequest(format!(
                "bulk action {:?} is not retry or cancel",
                other.unwrap_or("")
            )))
        }
    };
    Ok(BulkFilter {
        action,
        state: parse_state(state)?,
        kind: non_empty(kind).map(str::to_string),
        up_to_id,
    })
}

/// `GET /ui/jobs/bulk`: how many jobs the bulk action would change, and the button.
pub async fn bulk_confirm(
    State(state): State<AppState>,
    user: UiUser,
    query: Result<Query<BulkQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, UiError> {
    let Query(q) = query.map_err(|e| UiError::BadRequest(e.body_text()))?;
    user.require_admin()?;
    let filter = bulk_filter(
        q.action.as_deref(),
        q.state.as_deref(),
        q.kind.as_deref(),
        None,
    )?;
    let preview = storage::preview_bulk_action(state.client.pool(), &filter).await?;
    let (verb, verb_ing, past) = match filter.action {
        BulkAction::Retry => ("Retry", "retry", "retried"),
        BulkAction::Cancel => ("Cancel", "cancel", "cancelled"),
    };
    let states = filter.states().unwrap_or_default().join(" or ");
    let what = match &filter.kind {
        Some(k) => format!("{states} jobs of kind {k}"),
        None => format!("{states} jobs of every kind"),
    };
    let n = preview.count.min(MAX_BULK);
    let state_str = filter.state.map(JobState::as_str).unwrap_or("");
    let kind_str = filter.kind.as_deref().unwrap_or("");
    let back = jobs_href(&[("state", state_str), ("kind", kind_str)]);
    let title = format!("{verb} jobs");
    let frame = Frame {
        title: &title,
        section: Section::Jobs,
        user: Some(&user),
        refresh_secs: None,
    };
    let content = html! {
        @if filter.states().is_none() {
            p.error role="alert" { "Nothing to " (verb_ing) ": " (state_str) " jobs cannot be " (past) "." }
        } @else if preview.count == 0 {
            p { "No " (what) " to " (verb_ing) "." }
        } @else {
            form.card method="post" action="/ui/jobs/bulk" {
                p.confirm {
                    strong { (count(n)) } " " (what) " will be " (past) "."
                    @if preview.count > MAX_BULK {
                        " More than " (count(MAX_BULK)) " match: this takes the oldest " (count(MAX_BULK)) "; run it again for the rest."
                    }
                    " Jobs that match after this page was loaded are left alone."
                }
                input type="hidden" name="csrf" value=(user.csrf);
                input type="hidden" name="action" value=(verb_ing);
                input type="hidden" name="state" value=(state_str);
                input type="hidden" name="kind" value=(kind_str);
                input type="hidden" name="up_to_id" value=(preview.max_id.unwrap_or(0));
                label for="bulk-reason" { "Reason (optional, for the audit log)" }
                input id="bulk-reason" name="reason" type="text" maxlength="500";
                div.buttons {
                    button type="submit" { (verb) " " (count(n)) " jobs" }
                    a href=(back) { "Back to the list" }
                }
            }
        }
        @if filter.states().is_none() || preview.count == 0 {
            p { a href=(back) { "Back to the list" } }
        }
    };
    Ok(layout(&frame, content).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_out_of_traceparents() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id("garbage"), None);
        assert_eq!(trace_id("00-<script>-x-01"), None);
    }
}

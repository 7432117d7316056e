//! Completions and failures per minute over the last hour: one cached query for all kinds,
//! drawn as inline SVG (no script, no external library, styled by the page's stylesheet).

use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};

use maud::{html, Markup};
use sluice_common::storage::{self, MinuteCount};
use sqlx::PgPool;

/// Minutes shown.
pub const MINUTES: usize = 60;

/// One kind's (or the total's) last hour, oldest minute first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Series {
    /// Completed jobs per minute, `[0]` = 59 minutes ago, `[59]` = this minute.
    pub completed: [i64; MINUTES],
    /// Failed jobs per minute, same order.
    pub failed: [i64; MINUTES],
}

impl Default for Series {
    fn default() -> Self {
        Series {
            completed: [0; MINUTES],
            failed: [0; MINUTES],
        }
    }
}

impl Series {
    /// Total completed over the hour.
    pub fn completed_total(&self) -> i64 {
        self.completed.iter().sum()
    }

    /// Total failed over the hour.
    pub fn failed_total(&self) -> i64 {
        self.failed.iter().sum()
    }
}

/// Every kind's series plus the total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chart {
    /// By kind.
    pub by_kind: BTreeMap<String, Series>,
    /// All kinds together.
    pub total: Series,
}

impl Chart {
    /// Builds the series from the query's rows.
    pub fn from_rows(rows: &[MinuteCount]) -> Chart {
        let mut chart = Chart::default();
        for r in rows {
            let Ok(ago) = usize::try_from(r.minutes_ago) else {
                continue;
            };
            if ago >= MINUTES {
                continue;
            }
            let slot = MINUTES - 1 - ago;
            let s = chart.by_kind.entry(r.kind.clone()).or_default();
            s.completed[slot] += r.completed;
            s.failed[slot] += r.failed;
            chart.total.completed[slot] += r.completed;
            chart.total.failed[slot] += r.failed;
        }
        chart
    }
}

/// A computed chart and when.
#[derive(Debug, Clone)]
pub struct Computed {
    /// For the age check.
    at: Instant,
    /// Shown on the page ("as of").
    pub as_of: DateTime<Utc>,
    /// The series.
    pub chart: Arc<Chart>,
}

/// The overview's chart, served stale-while-revalidate: a page gets the latest computed
/// chart at once, and when that is older than
/// [`super::UiSettings::chart_cache_ttl`] one background task recomputes it for the next
/// page. The chart query reads the last hour's finished jobs (no index on `finished_at`,
/// see [`storage::count_finished_jobs_per_minute`]), so it runs off the request path, at
/// most once per TTL however many dashboards are open, and only while someone looks. Only
/// the first page after start waits for it.
#[derive(Debug, Default)]
pub struct ChartCache {
    /// The latest chart.
    latest: std::sync::Mutex<Option<Computed>>,
    /// A background refresh is running.
    refreshing: AtomicBool,
    /// Single-flight for the first computation.
    first: tokio::sync::Mutex<()>,
}

impl ChartCache {
    fn current(&self) -> Option<Computed> {
        self.latest.lock().ok().and_then(|g| g.clone())
    }

    async fn compute(&self, pool: &PgPool) -> sluice_common::Result<Computed> {
        let rows = storage::count_finished_jobs_per_minute(pool).await?;
        let computed = Computed {
            at: Instant::now(),
            as_of: Utc::now(),
            chart: Arc::new(Chart::from_rows(&rows)),
        };
        if let Ok(mut g) = self.latest.lock() {
            *g = Some(computed.clone());
        }
        Ok(computed)
    }

    /// The latest chart; starts a background refresh when it is older than `ttl`.
    pub async fn get(
        self: &Arc<Self>,
        pool: &PgPool,
        ttl: Duration,
    ) -> sluice_common::Result<Computed> {
        if let Some(c) = self.current() {
            if c.at.elapsed() >= ttl && !self.refreshing.swap(true, Ordering::SeqCst) {
                let cache = self.clone();
                let pool = pool.clone();
                tokio::spawn(async move {
                    if let Err(err) = cache.compute(&pool).await {
                        tracing::warn!(error = %err, "could not refresh the UI's chart");
                    }
                    cache.refreshing.store(false, Ordering::SeqCst);
                });
            }
            return Ok(c);
        }
        let _first = self.first.lock().await;
        if let Some(c) = self.current() {
            return Ok(c);
        }
        self.compute(pool).await
    }
}

/// A bar chart of one series: completed bars with failed stacked on top, scaled to the
/// busiest minute; the accessible name states the totals.
pub fn svg(series: &Series, width: u32, height: u32, label: &str) -> Markup {
    let peak = series
        .completed
        .iter()
        .zip(series.failed.iter())
        .map(|(c, f)| c + f)
        .max()
        .unwrap_or(0)
        .max(1);
    let bar_w = f64::from(width) / MINUTES as f64;
    let h = f64::from(height);
    let name = format!(
        "{label}: {} completed and {} failed in the last hour (peak {} per minute)",
        series.completed_total(),
        series.failed_total(),
        if peak == 1 && series.completed_total() + series.failed_total() == 0 {
            0
        } else {
            peak
        }
    );
    html! {
        svg.chart role="img" aria-label=(name)
            width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) {
            title { (name) }
            rect.chart-bg x="0" y="0" width=(width) height=(height) {}
            @for i in 0..MINUTES {
                @let c = series.completed[i] as f64 / peak as f64 * h;
                @let f = series.failed[i] as f64 / peak as f64 * h;
                @let x = i as f64 * bar_w;
                @if c > 0.0 {
                    rect.bar-ok x=(format!("{x:.2}")) y=(format!("{:.2}", h - c))
                        width=(format!("{:.2}", (bar_w - 0.5).max(0.5))) height=(format!("{c:.2}")) {}
                }
                @if f > 0.0 {
                    rect.bar-fail x=(format!("{x:.2}")) y=(format!("{:.2}", h - c - f))
                        width=(format!("{:.2}", (bar_w - 0.5).max(0.5))) height=(format!("{f:.2}")) {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_land_in_their_minute_with_now_on_the_right() {
        let rows = vec![
            MinuteCount {
                kind: "a".into(),
                minutes_ago: 0,
                completed: 3,
                failed: 1,
            },
            MinuteCount {
                kind: "b".into(),
                minutes_ago: 59,
                completed: 2,
                failed: 0,
            },
        ];
        let chart = Chart::from_rows(&rows);
        assert_eq!(chart.by_kind["a"].completed[59], 3);
        assert_eq!(chart.by_kind["a"].failed[59], 1);
        assert_eq!(chart.by_kind["b"].completed[0], 2);
        assert_eq!(chart.total.completed_total(), 5);
        let markup = svg(&chart.total, 180, 30, "All kinds").into_string();
        assert!(markup.contains("5 completed and 1 failed"));
        assert_eq!(markup.matches("class=\"bar-ok\"").count(), 2);
    }
}

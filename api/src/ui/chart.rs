//! Completions and failures per minute over the last hour: one cached query for all kinds,
//! drawn as inline SVG (no script, no external library, styled by the page's stylesheet).

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

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

/// The last computed chart, reused for [`super::UiSettings::chart_cache_ttl`]; one
/// computation at a time (others wait for it rather than running the same scan).
#[derive(Debug, Default)]
pub struct ChartCache {
    /// When computed, and what.
    inner: tokio::sync::Mutex<Option<(Instant, Arc<Chart>)>>,
}

impl ChartCache {
    /// The chart, from the cache while it is fresher than `ttl`.
    pub async fn get(&self, pool: &PgPool, ttl: Duration) -> sluice_common::Result<Arc<Chart>> {
        let mut guard = self.inner.lock().await;
        if let Some((at, chart)) = guard.as_ref() {
            if at.elapsed() < ttl {
                return Ok(chart.clone());
            }
        }
        let rows = storage::count_finished_jobs_per_minute(pool).await?;
        let chart = Arc::new(Chart::from_rows(&rows));
        *guard = Some((Instant::now(), chart.clone()));
        Ok(chart)
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

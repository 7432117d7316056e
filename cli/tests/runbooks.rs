#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test, with its line
//! The runbooks in `docs/runbooks/` must stay true: every `sctl ...` command in their
//! code blocks must be a valid `sluicectl` command line, and the raw SQL of the fallback
//! appendix must work verbatim on Sluice's schema, with workers behaving correctly after it.

use std::time::Duration;

use clap::Parser;
use serde_json::json;
use sluice_cli::Cli;
use sluice_common::model::KindLease;
use sluice_common::{storage, JobClient, JobState, NewJob};
use sqlx::PgPool;

const MIGRATOR: &sqlx::migrate::Migrator = &sluice_common::db::MIGRATOR;
const DRAIN: &str = include_str!("../../docs/runbooks/drain-workers.md");
const RESTART: &str = include_str!("../../docs/runbooks/graceful-restart.md");

/// Lines inside fenced code blocks, with the block's language.
fn code_lines(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut lang: Option<String> = None;
    for line in doc.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("```") {
            lang = match lang {
                Some(_) => None,
                None => Some(rest.trim().to_string()),
            };
        } else if let Some(l) = &lang {
            out.push((l.clone(), line.to_string()));
        }
    }
    out
}

/// Minimal POSIX-ish word splitting: quotes group, `#` starts a comment, `|`, `&&` and `;`
/// end the command.
fn shell_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '#' | '|' | ';') if !in_word || c != '#' => break,
            (None, '&') if chars.peek() == Some(&'&') => break,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[test]
fn every_sluicectl_command_in_the_runbooks_is_valid() {
    let mut checked = 0;
    for doc in [DRAIN, RESTART] {
        for (_, line) in code_lines(doc) {
            let Some(rest) = line.trim_start().strip_prefix("sctl ") else {
                continue;
            };
            let mut argv = vec![
                "sluicectl".to_string(),
                "--database-url".into(),
                "postgres://u@h/db".into(),
            ];
            argv.extend(shell_words(rest));
            if let Err(err) = Cli::try_parse_from(&argv) {
                panic!("runbook line {line:?} does not parse: {err}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "found only {checked} sctl commands");
}

#[test]
fn the_runbooks_cover_what_operators_need() {
    for needle in [
        "sudo systemctl stop sluice-worker",
        "kubectl -n sluice scale deployment/sluice-worker",
        "sctl wait-drained",
        "sctl pause",
        "sctl resume",
        "sctl release",
        "sctl audit",
        "no `audit_log` row",
        "verbatim",
        "Type=notify",
    ] {
        assert!(DRAIN.contains(needle), "drain-workers.md lacks {needle:?}");
    }
    for needle in [
        "kubectl -n sluice rollout restart deployment/sluice-api",
        "kubectl -n sluice rollout restart deployment/sluice-worker",
        "sudo systemctl restart sluice-worker",
        "terminationGracePeriodSeconds: 35",
        "terminationGracePeriodSeconds: 125",
        "Shutting down API...",
        "Shutting down worker...",
        "Idempotency-Key: <job id>",
        "Terminating",
        "503",
        "5xx during a restart is a bug",
    ] {
        assert!(
            RESTART.contains(needle),
            "graceful-restart.md lacks {needle:?}"
        );
    }
}

/// The statements of the appendix's ```sql block, placeholders filled in.
fn appendix_sql(job_id: i64) -> Vec<String> {
    let sql: String = code_lines(DRAIN)
        .into_iter()
        .filter(|(lang, _)| lang == "sql")
        .map(|(_, l)| l)
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    sql.replace("<job-id>", &job_id.to_string())
        .replace("<you>", "oncall")
        .replace("<why>", "drill")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn the_raw_sql_fallback_works_verbatim_and_workers_behave_after_it(pool: PgPool) {
    let client = JobClient::new(pool.clone());
    let lease = |k: &str| {
        vec![KindLease {
            kind: k.to_string(),
            lease_timeout: Duration::from_secs(300),
        }]
    };
    client
        .enqueue(&NewJob::new("search.reindex", json!({})))
        .await
        .unwrap();
    let stuck = client
        .lease("dead-host:1", &lease("search.reindex"), 1)
        .await
        .unwrap()
        .remove(0);
    let waiting = client
        .enqueue(&NewJob::new("search.reindex", json!({})))
        .await
        .unwrap()
        .job;

    let statements = appendix_sql(stuck.id);
    assert_eq!(statements.len(), 6, "{statements:#?}");
    // Confirm drain, then pause: the waiting job is held and not leased.
    for s in &statements[..3] {
        sqlx::raw_sql(s).execute(&pool).await.unwrap();
    }
    assert_eq!(
        storage::find_job(&pool, waiting.id)
            .await
            .unwrap()
            .unwrap()
            .state,
        JobState::Paused
    );
    assert!(client
        .lease("w:2", &lease("search.reindex"), 5)
        .await
        .unwrap()
        .is_empty());
    // Flip back, force re-lease, audit row: the stuck job is leasable again, the old lease
    // is fenced off.
    for s in &statements[3..] {
        sqlx::raw_sql(s).execute(&pool).await.unwrap();
    }
    let again = client
        .lease("w:2", &lease("search.reindex"), 5)
        .await
        .unwrap();
    let ids: Vec<i64> = again.iter().map(|j| j.id).collect();
    assert!(
        ids.contains(&stuck.id) && ids.contains(&waiting.id),
        "{ids:?}"
    );
    assert!(client.complete(&[stuck.lease()]).await.unwrap().is_empty());
    let audit = client.audit_log(None, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].target, format!("job:{}", stuck.id));
}

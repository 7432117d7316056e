//! `migrate`: applies the embedded migrations.

use crate::output::print_lines;
use crate::{CliError, Ctx};

/// Applies pending migrations under sqlx's advisory lock (with `lock_timeout` set by
/// `sluice_common::db::migrate`), so two at once apply the schema exactly once.
pub async fn migrate(ctx: &Ctx) -> Result<(), CliError> {
    sluice_common::db::migrate(&ctx.pool).await?;
    let total = sluice_common::db::MIGRATOR.iter().count();
    if ctx.json {
        crate::output::print_json(&serde_json::json!({ "migrations": total, "ok": true }))
    } else {
        print_lines(&[format!("migrations applied ({total} in total)")])
    }
}

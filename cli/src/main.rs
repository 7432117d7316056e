//! `sluicectl`: the operator CLI (SPEC.md §6). Everything lives in the library; see its
//! `# Layout` tour.

use sluice_cli::{run, Cli};
use sluice_common::config::parse_or_exit;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli: Cli = parse_or_exit();
    std::process::exit(run(cli).await);
}

//! `sluice-worker` entry point; everything else is in the library.

use std::{
    process::ExitCode,
    sync::{atomic::AtomicBool, Arc},
};

use sluice_common::config::{bad_config, parse_or_exit};
use sluice_worker::{app::Worker, config::Config, sd_notify};

fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = sluice_common::telemetry::init(config.log.format(), "sluice-worker");
        let worker = match Worker::build(config).await {
            Ok(w) => w,
            Err(e) => bad_config(e),
        };
        let draining = Arc::new(AtomicBool::new(false));
        let flag = draining.clone();
        let signals = match sluice_common::shutdown::Signals::install(move || {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("Shutting down worker...");
            sd_notify::notify("STOPPING=1");
        }) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        worker.run_until_stopped(signals, draining).await
    })
}

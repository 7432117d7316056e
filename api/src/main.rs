//! `sluice-api`: parses the configuration, then hands over to [`sluice_api::Application`].

use std::process::ExitCode;

use sluice_api::{config::Config, Application};
use sluice_common::{config::parse_or_exit, sd_notify, shutdown::Signals, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
    // Exits 2 on bad tokens, a bad DATABASE_URL or an unreadable `sslrootcert`.
    let settings = config.settings();
    let _telemetry = telemetry::init(config.log.format(), "sluice-api");
    let app = match Application::build(config, settings).await {
        Ok(app) => app,
        Err(err) => {
            tracing::error!(error = %err, "could not start");
            return ExitCode::from(1);
        }
    };
    let readiness = app.readiness();
    // STOPPING=1 right after readiness flips, so systemd shows the unit deactivating for
    // the whole drain (SPEC.md §8: the units are `Type=notify`).
    let signals = match Signals::install(move || {
        readiness.start_draining();
        sd_notify::notify("STOPPING=1");
    }) {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!(error = %err, "could not install signal handlers");
            return ExitCode::from(1);
        }
    };
    // Both listeners are bound: connections queue in the kernel from here on and are
    // answered as soon as the server loop below starts, so this is the moment systemd may
    // consider the API started. Readiness for traffic stays `/health/ready`.
    sd_notify::notify("READY=1");
    app.run_until_stopped(signals).await
}

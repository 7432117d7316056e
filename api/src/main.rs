//! `sluice-api`: parses the configuration, then hands over to [`sluice_api::Application`].

use std::process::ExitCode;

use sluice_api::{config::Config, Application};
use sluice_common::{config::parse_or_exit, shutdown::Signals, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let config: Config = parse_or_exit();
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
    let signals = match Signals::install(move || readiness.start_draining()) {
        Ok(signals) => signals,
        Err(err) => {
            tracing::error!(error = %err, "could not install signal handlers");
            return ExitCode::from(1);
        }
    };
    app.run_until_stopped(signals).await
}

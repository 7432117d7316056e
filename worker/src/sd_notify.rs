//! systemd's readiness protocol, shared with the API: see [`sluice_common::sd_notify`].

pub use sluice_common::sd_notify::notify;

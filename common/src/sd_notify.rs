//! systemd's readiness protocol (`Type=notify`): a datagram to `$NOTIFY_SOCKET`.
//! A few lines of std instead of a crate; abstract socket names (`@…`) are supported.
//!
//! Shared by both services: the worker says `READY=1` when leasing starts, the API when
//! its listeners are bound and it serves; both say `STOPPING=1` the instant SIGTERM lands,
//! so `systemctl status` shows "deactivating" while they drain.

use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `READY=1`, `STOPPING=1`) if `NOTIFY_SOCKET` is set; a failure is
/// logged, never fatal (a process outside systemd has no socket).
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| -> std::io::Result<()> {
        let sock = UnixDatagram::unbound()?;
        let bytes = path.as_encoded_bytes();
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        } else {
            sock.send_to(state.as_bytes(), &path)?;
        }
        Ok(())
    })();
    if let Err(err) = result {
        tracing::warn!(error = %err, state, "could not notify systemd");
    }
}

//! The captured result of running a CLI.

use std::time::Duration;

use serde_json::Value;

/// What a finished command printed and how it exited.
#[derive(Debug)]
pub struct Out {
    /// The exit code (a command killed by a signal fails the test instead).
    pub code: i32,
    /// Standard output, as text.
    pub stdout: String,
    /// Standard error, as text.
    pub stderr: String,
}

impl Out {
    /// Standard output parsed as JSON (for `--json` commands); panics with the whole
    /// output when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Waits for `child` (spawned with piped stdout and stderr) to exit, at most `limit`.
pub async fn finish(child: tokio::process::Child, limit: Duration) -> Out {
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the command did not exit within {limit:?}"))
        .unwrap();
    Out {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs `cmd` to the end with piped output (and no stdin), at most `limit`.
pub async fn run(mut cmd: tokio::process::Command, limit: Duration) -> Out {
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    finish(cmd.spawn().unwrap(), limit).await
}

//! A real binary as a child process.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// A port free on 127.0.0.1 when asked (the binary binds it a moment later; the kernel
/// does not hand a just-released port out again that soon).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A path in the temp folder that nothing uses yet (unique per process and call): a
/// barrier file a test creates when it lets a held job go.
pub fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "sluice-test-{}-{}-{name}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Writes `text` to a new file in the temp folder (names unique per process and call) and
/// returns its path: handlers files, barrier files.
pub fn write_temp(name: &str, text: &str) -> PathBuf {
    let p = temp_path(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A running child process whose stdout and stderr lines are all kept (in arrival order,
/// the two streams interleaved), so a test can wait for a line and a failure message can
/// show everything the process said. Killed on drop, so a failing test leaves nothing
/// running.
#[derive(Debug)]
pub struct Process {
    /// The child itself.
    pub child: Child,
    /// Every line it printed so far; filled by one reader thread per stream.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Spawns `cmd` with both output streams captured.
    pub fn spawn(mut cmd: Command) -> Process {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", cmd.get_program()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        Process { child, lines }
    }

    /// Its process id.
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends signal `sig` (`libc::SIGTERM`, `SIGKILL`, `SIGSTOP`, ...).
    pub fn signal(&self, sig: i32) {
        let rc = kill(self.pid(), sig);
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// The lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Everything printed so far, one line each.
    pub fn log(&self) -> String {
        let mut s = self.lines().join("\n");
        s.push('\n');
        s
    }

    /// Waits until a line contains `needle`.
    pub async fn wait_log(&self, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !self
            .lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
        {
            assert!(
                Instant::now() < deadline,
                "no line contained {needle:?} within {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the process to exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `GET url` answers `status` (and, if given, exactly `body`); panics if
    /// the process exits first or after `limit`.
    pub async fn wait_http(&mut self, url: &str, status: u16, body: Option<&str>, limit: Duration) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
                if r.status() == status {
                    let text = r.text().await.unwrap_or_default();
                    if body.is_none_or(|b| b == text) {
                        return;
                    }
                }
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "exited with {st} before {url} answered {status}: {}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{url} never answered {status} {body:?} within {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `kill(2)` on our own child; the one unsafe call tests need (sending SIGSTOP and
/// SIGTERM by number, which `Child::kill` cannot).
#[allow(unsafe_code)]
fn kill(pid: i32, sig: i32) -> i32 {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe { libc::kill(pid, sig) }
}

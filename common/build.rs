//! Stamps the build with the git revision it was built from, for `sluice_build_info` and
//! the trace resource: `SLUICE_BUILD_REVISION` when set (a Docker build, where there is no
//! `.git`, passes it as a build argument), else `git rev-parse HEAD`, else `unknown`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(env_dir())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn env_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| ".".into()))
}

/// Asks cargo to rerun us when HEAD moves: HEAD itself (per worktree), the branch it names
/// and packed-refs (in the common git dir). Only existing files: a missing one would make
/// cargo rerun the script on every build.
fn watch_head() {
    let (Some(git_dir), Some(common_dir)) = (
        git(&["rev-parse", "--path-format=absolute", "--git-dir"]),
        git(&["rev-parse", "--path-format=absolute", "--git-common-dir"]),
    ) else {
        return;
    };
    let mut watch = vec![Path::new(&git_dir).join("HEAD")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(Path::new(&common_dir).join(branch));
    }
    watch.push(Path::new(&common_dir).join("packed-refs"));
    for path in watch.into_iter().filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=SLUICE_BUILD_REVISION");
    println!("cargo:rerun-if-changed=build.rs");
    let from_env = std::env::var("SLUICE_BUILD_REVISION")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    let revision = match from_env {
        Some(rev) => rev,
        None => {
            watch_head();
            git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    // Label values may hold anything, but keep it one printable line.
    let revision: String = revision.chars().filter(|c| c.is_ascii_graphic()).collect();
    println!("cargo:rustc-env=SLUICE_BUILD_REVISION={revision}");
}

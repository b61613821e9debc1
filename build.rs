//! Stamps the version `ucanal --version` prints: the crate version and, in a git
//! checkout, `git describe --always --dirty` (the commit, and whether the tree had
//! changes); without git (a source tarball) the crate version alone.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    let crate_version = env!("CARGO_PKG_VERSION");
    let version = match git(&["describe", "--always", "--dirty"]) {
        Some(d) => format!("{crate_version} (git {d})"),
        None => crate_version.to_string(),
    };
    println!("cargo:rustc-env=UCANAL_VERSION={version}");
    // Describe again when the commit or the tree changes: HEAD and the index (a
    // commit, a checkout), the sources (-dirty). Without these cargo would re-run the
    // script on any change of the package but never on a commit.
    for p in ["src", "Cargo.toml", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    // Only this checkout's own branch: HEAD, the index, and the ref HEAD points to
    // (loose or packed). Not all of refs/heads: in a repository with several worktrees
    // every commit on any branch would rebuild every checkout.
    // (A path that does not exist would make cargo run the script on every build.)
    let dir = git(&["rev-parse", "--git-dir"]);
    let common = git(&["rev-parse", "--git-common-dir"]);
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    let mut watched = vec![(dir.clone(), "HEAD".to_string()), (dir, "index".to_string())];
    watched.push((common.clone(), "packed-refs".to_string()));
    if let Some(b) = branch {
        watched.push((common, b));
    }
    for (d, f) in watched {
        if let Some(d) = d
            && std::path::Path::new(&d).join(&f).exists()
        {
            println!("cargo:rerun-if-changed={d}/{f}");
        }
    }
}

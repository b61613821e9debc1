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
    // (A path that does not exist would make cargo run the script on every build.)
    let dir = git(&["rev-parse", "--git-dir"]);
    let common = git(&["rev-parse", "--git-common-dir"]);
    let watched = [(&dir, "HEAD"), (&dir, "index"), (&common, "packed-refs"), (&common, "refs/heads")];
    for (d, f) in watched {
        if let Some(d) = d
            && std::path::Path::new(d).join(f).exists()
        {
            println!("cargo:rerun-if-changed={d}/{f}");
        }
    }
}

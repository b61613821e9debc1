//! What a daemon's users expect around the binary: shell completions that complete,
//! a manual page that renders, a systemd unit that systemd accepts, a version that says
//! which build it is.

mod common;

use std::path::Path;
use std::process::{Command, ExitCode};

use common::harness::Suite;
use common::{repo, text, ucanal_bin};

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite.test("bash_completion_completes_sh_to_show", bash_completion);
    suite.test("zsh_and_fish_completions_are_generated", other_shells);
    suite.test("the_man_page_renders", man_page);
    suite.test("the_systemd_unit_verifies", systemd_unit);
    suite.test("version_carries_the_git_describe", version);
    suite.run()
}

fn ucanal(args: &[&str]) -> String {
    let out = Command::new(ucanal_bin()).args(args).output().expect("running ucanal");
    assert!(out.status.success(), "ucanal {args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

/// Runs bash's completion as a shell does on `<line><TAB>`: COMP_WORDS and COMP_CWORD
/// set, the function `complete -p ucanal` names called, COMPREPLY printed.
fn complete(script: &Path, line: &str) -> Vec<String> {
    let probe = r#"
        source "$1"
        read -r -a COMP_WORDS <<<"$2"
        [[ $2 == *' ' ]] && COMP_WORDS+=('')
        COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
        COMP_LINE=$2 COMP_POINT=${#2}
        fn=$(complete -p ucanal | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
        [[ -n $fn ]] || { echo "no completion function for ucanal" >&2; exit 1; }
        prev=${COMP_WORDS[COMP_CWORD-1]:-}
        "$fn" ucanal "${COMP_WORDS[COMP_CWORD]}" "$prev"
        printf '%s\n' "${COMPREPLY[@]}"
    "#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", probe, "probe"])
        .arg(script)
        .arg(line)
        .output()
        .expect("running bash");
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).lines().filter(|l| !l.is_empty()).map(String::from).collect()
}

fn bash_completion() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("ucanal.bash");
    std::fs::write(&script, ucanal(&["completions", "bash"])).unwrap();
    assert_eq!(complete(&script, "ucanal sh"), ["show"]);
    let subcommands = complete(&script, "ucanal ");
    for want in ["run", "apply", "completions", "man", "topology"] {
        assert!(subcommands.iter().any(|s| s == want), "{want} in {subcommands:?}");
    }
    assert!(complete(&script, "ucanal show --js").contains(&"--json".to_string()));
}

fn other_shells() {
    assert!(ucanal(&["completions", "zsh"]).starts_with("#compdef ucanal"));
    assert!(ucanal(&["completions", "fish"]).contains("complete -c ucanal"));
    let out = Command::new(ucanal_bin()).args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

fn man_page() {
    let dir = tempfile::tempdir().unwrap();
    let page = dir.path().join("ucanal.1");
    std::fs::write(&page, ucanal(&["man"])).unwrap();
    let out = Command::new("man")
        .arg("-l")
        .arg(&page)
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "80")
        .output()
        .expect("man (Debian: man-db)");
    assert!(out.status.success(), "man -l: {}", text(&out.stderr));
    let page = text(&out.stdout);
    for want in [
        "NAME",
        "ucanal - A userspace Canal-style container-network dataplane",
        "SYNOPSIS",
        "SUBCOMMANDS",
        "completions",
        "VERSION",
    ] {
        assert!(page.contains(want), "{want} in\n{page}");
    }
}

/// `systemd-analyze verify` in a root of its own (`--root`): systemd's units copied in,
/// ours in /etc/systemd/system and the built binary at the unit's ExecStart path, so
/// nothing is installed on the machine.
fn systemd_unit() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let unit = std::fs::read_to_string(repo().join("packaging/ucanal@.service")).unwrap();
    assert!(unit.contains("KillMode=mixed") && unit.contains("--handover-wait 0"), "{unit}");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let bin = exec.split_whitespace().next().unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    std::fs::write(r.join("etc/systemd/system/ucanal@.service"), &unit).unwrap();
    let bin_at = r.join(bin.trim_start_matches('/'));
    std::fs::create_dir_all(bin_at.parent().unwrap()).unwrap();
    std::fs::copy(ucanal_bin(), &bin_at).unwrap();
    let units = r.join("usr/lib/systemd");
    std::fs::create_dir_all(&units).unwrap();
    let cp = Command::new("cp").arg("-r").arg("/lib/systemd/system").arg(&units).status().unwrap();
    assert!(cp.success(), "systemd's own units (Debian: systemd)");
    // Documentation=man:ucanal(1): verify runs `man`, which finds the generated page here.
    let man = r.join("usr/share/man/man1");
    std::fs::create_dir_all(&man).unwrap();
    std::fs::write(man.join("ucanal.1"), ucanal(&["man"])).unwrap();
    let verify = || {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg("ucanal@centos7-1.service")
            .env("MANPATH", r.join("usr/share/man"))
            .output()
            .expect("systemd-analyze (Debian: systemd)")
    };
    let out = verify();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
    // A mistake is seen: the same verification fails on a unit with one.
    std::fs::write(r.join("etc/systemd/system/ucanal@.service"), unit.replace("KillMode=mixed", "KillMode=mixd"))
        .unwrap();
    let out = verify();
    assert!(text(&out.stderr).contains("kill mode"), "{}", text(&out.stderr));
}

fn version() {
    let v = ucanal(&["--version"]);
    assert!(v.starts_with(&format!("ucanal {}", env!("CARGO_PKG_VERSION"))), "{v}");
    let head = Command::new("git").args(["rev-parse", "--short", "HEAD"]).current_dir(repo()).output();
    if let Some(h) = head.ok().filter(|h| h.status.success()) {
        let short = text(&h.stdout).trim().to_string();
        assert!(v.contains("(git ") && v.contains(&short[..7]), "{v} names commit {short}");
    }
}

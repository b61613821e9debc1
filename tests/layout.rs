//! The source layout's rules (issue 18), checked by scripts/import-cycles.py: no import
//! cycle between files of src/ outside a file's own tests (but the few it lists as
//! known, each with why), `api` names nothing of `control`, `cli` or `io`, nor tokio,
//! and the daemon and the CLI do not name each other.

mod common;

use std::process::{Command, ExitCode};

use common::harness::Suite;
use common::{repo, text};

fn main() -> ExitCode {
    let mut suite = Suite::new();
    suite.test("no_import_cycle_and_api_is_a_leaf", || {
        let out = Command::new("python3")
            .arg(repo().join("scripts/import-cycles.py"))
            .output()
            .expect("python3 scripts/import-cycles.py");
        let report = text(&out.stdout);
        println!("{report}");
        assert!(out.status.success(), "scripts/import-cycles.py found a fault:\n{report}{}", text(&out.stderr));
        assert!(report.contains("cycles: 0 new") && report.contains("api: a leaf"), "{report}");
    });
    suite.run()
}

//! Every link in the repository's Markdown resolves: a relative link names a file or
//! directory of the repository (never a path outside it), a `#fragment` names a heading of
//! its target as GitHub renders it (or an explicit `<a id=...>`), and an external link is a
//! well-formed http(s) URL. External links are never fetched: the test needs no network.
//!
//! One trial per Markdown file, plus two that show the checker catches what it claims to.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::ExitCode;

use common::harness::Suite;

fn main() -> ExitCode {
    let root = common::repo();
    let files = markdown_files(&root);
    let mut suite = Suite::new();
    suite.test("the_repository_has_docs", {
        let files = files.clone();
        move || {
            let names: BTreeSet<String> = files.iter().map(|f| rel(&common::repo(), f)).collect();
            for want in ["README.md", "docs/design.md", "docs/testing.md", "docs/conformance.md"] {
                assert!(names.contains(want), "{want} is missing; found {names:?}");
            }
        }
    });
    for file in files {
        let name = format!("links_resolve::{}", rel(&root, &file).replace(['/', '.', '-'], "_"));
        suite.test(&name, move || {
            let broken = check_file(&common::repo(), &file);
            assert!(broken.is_empty(), "{} broken link(s):\n{}", broken.len(), broken.join("\n"));
        });
    }
    suite.test("slugs_are_githubs", || {
        for (heading, slug) in [
            ("Restart and upgrade without a reset", "restart-and-upgrade-without-a-reset"),
            ("VXLAN: whom ucanal accepts", "vxlan-whom-ucanal-accepts"),
            (
                "What each technique buys (`--variants every`, one run, 1 round each, 4 s)",
                "what-each-technique-buys---variants-every-one-run-1-round-each-4-s",
            ),
            ("The `ucanal` command", "the-ucanal-command"),
            (
                "A full conntrack, and an API that bad input cannot kill",
                "a-full-conntrack-and-an-api-that-bad-input-cannot-kill",
            ),
            ("**Peers** at [runtime](x.md)", "peers-at-runtime"),
        ] {
            assert_eq!(slug_of(heading), slug, "{heading}");
        }
    });
    suite.test("broken_links_are_found", || {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("docs")).unwrap();
        let good = "# Top\n\n## Second part\n\n<a id=\"custom\"></a>\n";
        std::fs::write(dir.path().join("docs/good.md"), good).unwrap();
        let doc = "# Here\n\n[ok](good.md) [ok](good.md#second-part) [ok](#here) [ok](good.md#custom)\n\
                   [ok](https://github.com/flannel-io/flannel) `[not a link](nowhere.md)`\n\
                   ```\n[not a link either](nowhere.md)\n```\n\
                   [gone](missing.md) [no anchor](good.md#third-part) [no self anchor](#there)\n\
                   [outside](../../etc/passwd) [absolute](/etc/passwd) [bad url](https://) [spaced](http://a b)\n";
        let file = dir.path().join("docs/test.md");
        std::fs::write(&file, doc).unwrap();
        let broken = check_file(dir.path(), &file);
        let want =
            ["missing.md", "good.md#third-part", "#there", "../../etc/passwd", "/etc/passwd", "https://", "http://a b"];
        for w in want {
            assert!(broken.iter().any(|b| b.contains(&format!("({w})"))), "{w} not reported; reported: {broken:#?}");
        }
        assert_eq!(broken.len(), want.len(), "good links reported as broken: {broken:#?}");
    });
    suite.run()
}

/// The path of `file` relative to `root`, with `/`.
fn rel(root: &Path, file: &Path) -> String {
    file.strip_prefix(root).unwrap_or(file).to_string_lossy().into_owned()
}

/// Every `*.md` under `root`, except build output, fuzz corpora and hidden directories.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        for e in entries.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if path.is_dir() {
                let skip = name.starts_with('.') || name == "target" || (dir.ends_with("fuzz") && name != "seeds");
                if !skip {
                    dirs.push(path);
                }
            } else if name.ends_with(".md") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// A Markdown file's lines outside fenced code blocks, numbered from 1.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fence: Option<&str> = None;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        let marker = ["```", "~~~"].into_iter().find(|m| t.starts_with(m));
        match (fence, marker) {
            (None, Some(m)) => fence = Some(m),
            (Some(f), Some(m)) if f == m => fence = None,
            (None, None) => out.push((i + 1, line)),
            _ => {}
        }
    }
    out
}

/// The line without its inline code spans (`...`): what they hold is not a link.
fn without_code(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('`') {
        out.push_str(&rest[..start]);
        let ticks = rest[start..].chars().take_while(|&c| c == '`').count();
        let after = &rest[start + ticks..];
        match after.find(&"`".repeat(ticks)) {
            Some(end) => rest = &after[end + ticks..],
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The anchors a file offers: its headings' GitHub slugs (`-1`, `-2` for repeats) and its
/// explicit `<a id="...">` / `<a name="...">`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let slug = slug_of(line[hashes..].trim().trim_end_matches('#').trim());
            let n = seen.entry(slug.clone()).or_insert(0);
            out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
            *n += 1;
        }
        for attr in ["id=\"", "name=\""] {
            let mut rest = line;
            while let Some(i) = rest.find(attr) {
                let v = &rest[i + attr.len()..];
                if let Some(end) = v.find('"') {
                    out.insert(v[..end].to_string());
                }
                rest = &v[v.find('"').map_or(v.len(), |e| e + 1)..];
            }
        }
    }
    out
}

/// GitHub's anchor for a heading: its text as rendered (no code ticks, emphasis or link
/// targets), lower case, punctuation dropped, each space a hyphen.
fn slug_of(heading: &str) -> String {
    // Links render as their label.
    let mut text = String::new();
    let mut rest = heading;
    while let Some((before, label, after)) = next_link(rest) {
        text.push_str(before);
        text.push_str(label);
        rest = after;
    }
    text.push_str(rest);
    text.to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The first inline link `[label](target)` of `s`: (text before it, label, text after it).
fn next_link(s: &str) -> Option<(&str, &str, &str)> {
    let (before, _, label, after) = next_link_target(s)?;
    Some((before, label, after))
}

/// The first inline link of `s`: (text before, target, label, text after).
fn next_link_target(s: &str) -> Option<(&str, &str, &str, &str)> {
    let mut from = 0;
    while let Some(open) = s[from..].find('[').map(|i| i + from) {
        let mut depth = 0;
        let mut close = None;
        for (i, c) in s[open..].char_indices() {
            match c {
                '[' => depth += 1,
                ']' => {
                    depth -= 1;
                    if depth == 0 {
                        close = Some(open + i);
                        break;
                    }
                }
                _ => {}
            }
        }
        let close = close?;
        if s[close + 1..].starts_with('(') {
            let body = &s[close + 2..];
            let mut depth = 1;
            for (i, c) in body.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            let target = body[..i].split(" \"").next().unwrap_or("").trim();
                            let label = &s[open + 1..close];
                            let label = label.strip_prefix('!').unwrap_or(label);
                            return Some((&s[..open], target, label, &body[i + 1..]));
                        }
                    }
                    _ => {}
                }
            }
            return None;
        }
        from = close + 1;
    }
    None
}

/// Every link target of a line: inline links and images, reference definitions
/// (`[label]: target`) and autolinks (`<https://...>`), with their labels.
fn links(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let trimmed = line.trim_start();
    if let Some(def) = trimmed.strip_prefix('[')
        && let Some((label, target)) = def.split_once("]:")
        && !label.contains(']')
    {
        out.push((label.to_string(), target.split_whitespace().next().unwrap_or("").to_string()));
        return out;
    }
    let mut rest = line;
    while let Some((_, target, label, after)) = next_link_target(rest) {
        out.push((label.to_string(), target.to_string()));
        rest = after;
    }
    let mut rest = line;
    while let Some(i) = rest.find("<http") {
        let v = &rest[i + 1..];
        let end = v.find('>').unwrap_or(v.len());
        out.push((String::new(), v[..end].to_string()));
        rest = &v[end..];
    }
    out
}

/// Checks every link of `file`; returns one line per broken link.
fn check_file(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let own = anchors(&text);
    let mut broken = Vec::new();
    for (n, line) in prose_lines(&text) {
        for (label, target) in links(&without_code(line)) {
            if let Err(why) = check_link(root, file, &own, &target) {
                broken.push(format!("{}:{n}: [{label}]({target}): {why}", rel(root, file)));
            }
        }
    }
    broken
}

fn check_link(root: &Path, file: &Path, own: &BTreeSet<String>, target: &str) -> Result<(), String> {
    if target.is_empty() {
        return Err("empty target".into());
    }
    if let Some((scheme, rest)) = target.split_once("://") {
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        let ok = matches!(scheme, "http" | "https")
            && !host.is_empty()
            && host.contains('.')
            && !target.chars().any(char::is_whitespace);
        return if ok { Ok(()) } else { Err("not a well-formed http(s) URL".into()) };
    }
    if target.starts_with("mailto:") {
        return Ok(());
    }
    let (path, fragment) = match target.split_once('#') {
        Some((p, f)) => (p, Some(f)),
        None => (target, None),
    };
    if path.is_empty() {
        let f = fragment.unwrap_or("");
        return if own.contains(f) { Ok(()) } else { Err(format!("no heading or anchor #{f} in this file")) };
    }
    if path.starts_with('/') {
        return Err("an absolute path: the repository must stand alone (use a relative link)".into());
    }
    let resolved = normalise(&file.parent().unwrap_or(root).join(path));
    if !resolved.starts_with(root) {
        return Err("points outside the repository".into());
    }
    if !resolved.exists() {
        return Err(format!("{} does not exist", rel(root, &resolved)));
    }
    if let Some(f) = fragment
        && resolved.extension().is_some_and(|e| e == "md")
        && !anchors(&std::fs::read_to_string(&resolved).unwrap_or_default()).contains(f)
    {
        return Err(format!("no heading or anchor #{f} in {}", rel(root, &resolved)));
    }
    Ok(())
}

/// `a/b/../c` -> `a/c`, without touching the file system (the target may not exist).
fn normalise(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

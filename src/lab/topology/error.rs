//! A field of a topology file that does not validate, and where it stands.

use super::yaml::Mark;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {field}: {problem}", line = mark.line, col = mark.col)]
pub struct TopologyError {
    pub mark: Mark,
    pub field: String,
    pub problem: String,
}

impl TopologyError {
    pub fn at(mark: Mark, field: &str, problem: impl Into<String>) -> TopologyError {
        TopologyError {
            mark,
            field: if field.is_empty() { "(file)".into() } else { field.into() },
            problem: problem.into(),
        }
    }
}

/// A topology file that cannot be loaded: unreadable, or a field that does not validate.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("{}:{source}", path.display())]
    Invalid { path: std::path::PathBuf, source: TopologyError },
}

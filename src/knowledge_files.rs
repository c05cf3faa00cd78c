//! Reading the knowledge files from a directory (the edge; the parsing itself is pure).

use crate::clinical::knowledge::{FILES, Knowledge, KnowledgeError};
use std::path::Path;

/// Loads the knowledge base from `dir` (a deployment's own tables) or, with None, the tables
/// compiled into the binary.
pub fn load(dir: Option<&Path>) -> Result<Knowledge, KnowledgeError> {
    let Some(dir) = dir else {
        return Knowledge::embedded();
    };
    let mut texts = Vec::new();
    for name in FILES {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).map_err(|e| KnowledgeError {
            file: path.display().to_string(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        texts.push((name, text));
    }
    let refs: Vec<(&str, &str)> = texts.iter().map(|(n, t)| (*n, t.as_str())).collect();
    Knowledge::from_files(&refs).map_err(|mut e| {
        e.file = dir.join(&e.file).display().to_string();
        e
    })
}

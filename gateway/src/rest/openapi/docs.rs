//! Proto comments as OpenAPI summaries and descriptions.

use std::collections::HashMap;

use prost_reflect::FileDescriptor;

/// The first sentence of a comment's first paragraph.
pub(super) fn summary(text: &str) -> String {
    let paragraph = text.split("\n\n").next().unwrap_or_default();
    let line = paragraph.split_whitespace().collect::<Vec<_>>().join(" ");
    match line.find(". ") {
        Some(at) => line[..=at].to_owned(),
        None => line,
    }
}

/// Leading comments from the descriptor set's source info, by file and element path.
#[derive(Default)]
pub(super) struct Comments {
    by_file: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    pub(super) fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        let comments = self
            .by_file
            .entry(file.name().to_owned())
            .or_insert_with(|| {
                let proto = file.file_descriptor_proto();
                let locations = proto
                    .source_code_info
                    .as_ref()
                    .map(|info| info.location.as_slice())
                    .unwrap_or_default();
                locations
                    .iter()
                    .filter_map(|location| {
                        let text = location.leading_comments.as_deref()?;
                        Some((location.path.clone(), clean_comment(text)))
                    })
                    .filter(|(_, text)| !text.is_empty())
                    .collect()
            });
        comments.get(path).cloned()
    }
}

/// `// text` lines as protoc records them (` text\n`), as Markdown.
fn clean_comment(text: &str) -> String {
    text.lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

//! Models and data by name from the Hugging Face Hub.

/// Whether `s` is a Hub repository id, `ORG/NAME`: two parts of letters, digits, `-`, `_` and
/// `.`, neither starting or ending with `-` or `.`, at most 96 characters each (the Hub's rule).
pub fn is_repo_id(s: &str) -> bool {
    let part = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !p.starts_with(['-', '.'])
            && !p.ends_with(['-', '.'])
            && !p.contains("..")
    };
    matches!(s.split_once('/'), Some((org, name)) if part(org) && part(name))
}

//! Names of things on the Hugging Face Hub: repository ids, `ORG/NAME[@REVISION][/PATH]`, and
//! `hf://datasets/...` URLs.

use hf_hub::RepoType;

/// Whether `s` is a Hub repository id, `ORG/NAME`: two parts of letters, digits, `-`, `_` and
/// `.`, neither starting or ending with `-` or `.`, at most 96 characters each (the Hub's rule).
pub fn is_repo_id(s: &str) -> bool {
    matches!(s.split_once('/'), Some((org, name)) if is_id_part(org) && is_id_part(name))
}

fn is_id_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 96
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !p.starts_with(['-', '.'])
        && !p.ends_with(['-', '.'])
        && !p.contains("..")
}

/// A repository (or one file of it) on the Hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRef {
    pub repo: String,
    pub dataset: bool,
    /// A branch, tag or commit (`main` when not given).
    pub revision: String,
    pub file: Option<String>,
}

impl HubRef {
    /// `ORG/NAME`, `ORG/NAME@REVISION`, optionally followed by `/PATH` of one file. A revision
    /// holding `/` is written with `%2F` (`@refs%2Fpr%2F1`), as huggingface_hub writes it.
    fn parse(s: &str, dataset: bool) -> Option<HubRef> {
        let mut parts = s.splitn(3, '/');
        let (org, name_rev) = (parts.next()?, parts.next()?);
        let file = parts.next().map(str::to_string);
        let (name, revision) = match name_rev.split_once('@') {
            Some((n, r)) if !r.is_empty() => (n, r.replace("%2F", "/").replace("%2f", "/")),
            Some(_) => return None,
            None => (name_rev, "main".to_string()),
        };
        let repo = format!("{org}/{name}");
        let file_ok = file.as_deref().is_none_or(|f| {
            f.split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\\'))
        });
        // A revision becomes a path in the cache (refs/REV): one or more plain components.
        let rev_ok = !revision.contains('\\')
            && revision
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..");
        (is_repo_id(&repo) && file_ok && rev_ok).then_some(HubRef {
            repo,
            dataset,
            revision,
            file,
        })
    }

    /// A model by name: `ORG/NAME[@REVISION]` or `ORG/NAME[@REVISION]/FILE.gguf`.
    pub fn model(s: &str) -> Option<HubRef> {
        Self::parse(s, false)
    }

    /// A data file by URL: `hf://datasets/ORG/NAME[@REVISION]/PATH`.
    pub fn data_file(s: &str) -> Option<HubRef> {
        let r = Self::parse(s.strip_prefix("hf://datasets/")?, true)?;
        r.file.is_some().then_some(r)
    }

    pub(super) fn repo_type(&self) -> RepoType {
        match self.dataset {
            true => RepoType::Dataset,
            false => RepoType::Model,
        }
    }

    /// How people write it (and how errors name it); it parses back to the same reference.
    pub fn display(&self) -> String {
        let rev = match self.revision.as_str() {
            "main" => String::new(),
            r => format!("@{}", r.replace('/', "%2F")),
        };
        let file = self
            .file
            .as_ref()
            .map(|f| format!("/{f}"))
            .unwrap_or_default();
        let kind = if self.dataset { "hf://datasets/" } else { "" };
        format!("{kind}{}{rev}{file}", self.repo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_as_the_hub_writes_them() {
        let m = HubRef::model("HuggingFaceTB/SmolLM2-135M@v1.0").unwrap();
        assert_eq!(
            (m.repo.as_str(), m.revision.as_str()),
            ("HuggingFaceTB/SmolLM2-135M", "v1.0")
        );
        let g = HubRef::model("org/repo-GGUF/sub/model.Q4_1.gguf").unwrap();
        assert_eq!(g.file.as_deref(), Some("sub/model.Q4_1.gguf"));
        let pr = HubRef::model("org/name@refs%2Fpr%2F3").unwrap();
        assert_eq!(pr.revision, "refs/pr/3");
        assert_eq!(HubRef::model(&pr.display()), Some(pr));
        let d = HubRef::data_file("hf://datasets/org/data@abc/train/part-0.parquet").unwrap();
        assert!(d.dataset);
        assert_eq!(
            d.display(),
            "hf://datasets/org/data@abc/train/part-0.parquet"
        );
        for bad in [
            "name",
            "/abs/path",
            "../x/y",
            "org/na me",
            "org/name@",
            "org/name/../x",
            "org/name@%2Fhome%2Fu%2F.bashrc",
            "org/name@a%2F..%2F..%2Fx",
            "org/name@a\\b",
        ] {
            assert!(HubRef::model(bad).is_none(), "{bad}");
        }
        assert!(
            HubRef::data_file("hf://datasets/org/data").is_none(),
            "a file is needed"
        );
        assert!(HubRef::data_file("hf://org/data/x.txt").is_none());
    }
}

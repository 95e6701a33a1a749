//! Refuses incoming files over a size or outside MIME patterns, and routes accepted files by
//! type into subdirectories of the receive directory.
//!
//! Configuration (TOML):
//!
//! ```toml
//! max-size = 104857600          # bytes; larger files are refused
//! mime = ["image/*", "text/*"]  # accepted types (globs); absent or empty: every type
//!
//! [[route]]                     # first match wins; no match: the receive directory itself
//! mime = "image/*"
//! dir = "Pictures"
//! ```

use fsnode_plugin::{AcceptDecision, FileMeta, NodeFacts, Peer, Policy};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Config {
    max_size: Option<u64>,
    #[serde(default)]
    mime: Vec<String>,
    #[serde(default)]
    route: Vec<Route>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Route {
    mime: String,
    dir: String,
}

pub struct AcceptRules {
    max_size: Option<u64>,
    mime: Vec<glob::Pattern>,
    routes: Vec<(glob::Pattern, String)>,
}

fn pattern(text: &str) -> Result<glob::Pattern, String> {
    glob::Pattern::new(text).map_err(|e| format!("pattern {text:?}: {e}"))
}

impl AcceptRules {
    fn decide(&self, file: &FileMeta) -> Option<AcceptDecision> {
        if let Some(max) = self.max_size.filter(|max| file.size > *max) {
            return Some(AcceptDecision::Reject(format!(
                "too large: {} bytes, this node takes at most {max}",
                file.size
            )));
        }
        if !self.mime.is_empty() && !self.mime.iter().any(|p| p.matches(&file.mime)) {
            return Some(AcceptDecision::Reject(format!(
                "type {} is not accepted here",
                file.mime.chars().take(100).collect::<String>()
            )));
        }
        self.routes
            .iter()
            .find(|(p, _)| p.matches(&file.mime))
            .map(|(_, dir)| AcceptDecision::Accept(Some(dir.clone())))
    }
}

impl Policy for AcceptRules {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(config).map_err(|e| e.to_string())?;
        Ok(Self {
            max_size: config.max_size,
            mime: config
                .mime
                .iter()
                .map(|p| pattern(p))
                .collect::<Result<_, _>>()?,
            routes: config
                .route
                .into_iter()
                .map(|r| Ok((pattern(&r.mime)?, r.dir)))
                .collect::<Result<_, String>>()?,
        })
    }

    fn on_transfer(
        &self,
        _node: &NodeFacts,
        _peer: &Peer,
        file: &FileMeta,
    ) -> Option<AcceptDecision> {
        self.decide(file)
    }
}

fsnode_plugin::plugin!(AcceptRules);

#[cfg(test)]
mod tests {
    use super::*;

    fn file(size: u64, mime: &str) -> FileMeta {
        FileMeta {
            transfer_id: "00".repeat(16),
            name: "f".into(),
            size,
            mime: mime.into(),
            mode: None,
            mtime: None,
        }
    }

    const CONFIG: &str = "max-size = 1000\nmime = [\"image/*\", \"text/*\"]\n\
        [[route]]\nmime = \"image/*\"\ndir = \"Pictures\"\n";

    #[test]
    fn refuses_large_files_and_other_types_and_routes_the_rest() {
        let rules = AcceptRules::configure(CONFIG).unwrap();
        assert!(
            matches!(rules.decide(&file(1001, "text/plain")), Some(AcceptDecision::Reject(r)) if r.contains("too large"))
        );
        assert!(
            matches!(rules.decide(&file(10, "video/mp4")), Some(AcceptDecision::Reject(r)) if r.contains("video/mp4"))
        );
        assert!(
            matches!(rules.decide(&file(10, "image/png")), Some(AcceptDecision::Accept(Some(d))) if d == "Pictures")
        );
        assert!(
            rules.decide(&file(10, "text/plain")).is_none(),
            "no route: no opinion"
        );
    }

    #[test]
    fn empty_config_has_no_opinion() {
        let rules = AcceptRules::configure("").unwrap();
        assert!(rules.decide(&file(u64::MAX, "x/y")).is_none());
        assert!(AcceptRules::configure("max-size = \"big\"").is_err());
    }
}

//! One generated binding per released contract version (Zed's extension host does the same):
//! a component is linked against the newest version it exports, so a plugin built against an
//! older contract keeps loading when the host learns newer ones.

/// `fsnode:policy@0.1.0` (`plugin-api/wit/0.1.0`, frozen).
pub mod v0_1_0 {
    wasmtime::component::bindgen!({
        path: "../plugin-api/wit/0.1.0",
        world: "policy",
    });
}

/// The contract versions this host knows, newest first, with the export that names each.
pub const KNOWN: &[(&str, &str)] = &[("0.1.0", "fsnode:policy/decide@0.1.0")];

/// The newest contract version among a component's export names: a component may export
/// more than this host knows (a newer contract's interface beside an older one), and is
/// linked against the newest version both know.
pub fn detect<'a>(exports: impl IntoIterator<Item = &'a str> + Clone) -> Option<&'static str> {
    KNOWN
        .iter()
        .find(|(_, export)| exports.clone().into_iter().any(|e| e == *export))
        .map(|(version, _)| *version)
}

#[cfg(test)]
mod tests {
    use super::detect;

    #[test]
    fn the_newest_known_version_a_component_exports_is_chosen() {
        assert_eq!(detect(["fsnode:policy/decide@0.1.0"]), Some("0.1.0"));
        // A plugin built for a later contract that still exports 0.1.0 loads as 0.1.0.
        assert_eq!(
            detect(["fsnode:policy/decide@0.9.0", "fsnode:policy/decide@0.1.0"]),
            Some("0.1.0")
        );
        assert_eq!(detect(["fsnode:policy/decide@0.9.0"]), None);
        assert_eq!(detect(["wasi:cli/run@0.2.0"]), None);
    }
}

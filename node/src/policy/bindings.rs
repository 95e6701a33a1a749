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

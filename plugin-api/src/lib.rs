//! Write an fsnode policy plugin in Rust: implement [`Policy`] (every method has a "no opinion"
//! default) and call [`plugin!`] once.
//!
//! ```ignore
//! use fsnode_plugin::{NodeFacts, Peer, Policy, TrustDecision};
//!
//! /// Trusts every device whose name starts with the configured prefix.
//! struct ByPrefix {
//!     prefix: String,
//! }
//!
//! impl Policy for ByPrefix {
//!     fn configure(config: &str) -> Result<Self, String> {
//!         Ok(Self { prefix: config.trim().to_owned() })
//!     }
//!
//!     fn on_discovered(&self, _node: &NodeFacts, peer: &Peer) -> Option<TrustDecision> {
//!         (!self.prefix.is_empty() && peer.name.starts_with(&self.prefix))
//!             .then_some(TrustDecision::Trust)
//!     }
//! }
//!
//! fsnode_plugin::plugin!(ByPrefix);
//! ```
//!
//! Build it as a `cdylib` for `wasm32-unknown-unknown` and turn the module into a component
//! (`fsnode plugins build`, or `wit_component::ComponentEncoder`); see this crate's README.
//!
//! The plugin runs with no WASI: it cannot read files, the clock, randomness or the
//! environment. The current time is `NodeFacts::now_ms`; configuration comes through
//! [`Policy::configure`].

wit_bindgen::generate!({
    world: "policy",
    path: "wit/0.1.0",
    pub_export_macro: true,
    default_bindings_module: "fsnode_plugin",
});

pub use exports::fsnode::policy::decide::{
    AcceptDecision, DeviceType, FileMeta, NodeFacts, Peer, PlatformKind, Queued, TrustDecision,
};

/// A policy plugin. Each method answers one question of the contract; `None` means "no
/// opinion": the next plugin in the node's order is asked, then the built-in default.
pub trait Policy: Sized + Send + Sync + 'static {
    /// Builds the plugin from its configuration text (empty when the operator gave none).
    /// An error disables the plugin; the message is journaled.
    fn configure(config: &str) -> Result<Self, String>;

    /// A device this node does not trust was discovered.
    fn on_discovered(&self, _node: &NodeFacts, _peer: &Peer) -> Option<TrustDecision> {
        None
    }

    /// A device this node does not trust sent an offer.
    fn on_offer(&self, _node: &NodeFacts, _peer: &Peer) -> Option<TrustDecision> {
        None
    }

    /// A trusted device wants to send `file`.
    fn on_transfer(
        &self,
        _node: &NodeFacts,
        _peer: &Peer,
        _file: &FileMeta,
    ) -> Option<AcceptDecision> {
        None
    }

    /// The order in which `queue` starts (transfer ids; those left out follow, in the
    /// default order).
    fn schedule(
        &self,
        _node: &NodeFacts,
        _queue: &[Queued],
        _connected: &[String],
    ) -> Option<Vec<String>> {
        None
    }

    /// The permission bits `file` gets here.
    fn map_mode(&self, _node: &NodeFacts, _file: &FileMeta) -> Option<u32> {
        None
    }
}

/// Exports a [`Policy`] implementation as the plugin's component interface. Call it once, at
/// the crate root, with the type.
#[macro_export]
macro_rules! plugin {
    ($ty:ty) => {
        // The contract's functions are free functions; the configured value lives here.
        #[allow(dead_code)]
        static __FSNODE_PLUGIN: ::std::sync::OnceLock<$ty> = ::std::sync::OnceLock::new();

        #[allow(dead_code)]
        fn __fsnode_plugin() -> ::core::option::Option<&'static $ty> {
            __FSNODE_PLUGIN.get().or_else(|| {
                // Not configured (a host that skipped `configure`): configure with nothing.
                let value = <$ty as $crate::Policy>::configure("").ok()?;
                ::core::option::Option::Some(__FSNODE_PLUGIN.get_or_init(|| value))
            })
        }

        #[allow(dead_code)]
        struct __FsnodePluginExport;

        impl $crate::exports::fsnode::policy::decide::Guest for __FsnodePluginExport {
            fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                let value = <$ty as $crate::Policy>::configure(&config)?;
                __FSNODE_PLUGIN
                    .set(value)
                    .map_err(|_| ::std::string::String::from("configured twice"))
            }

            fn on_discovered(
                node: $crate::NodeFacts,
                peer: $crate::Peer,
            ) -> ::core::option::Option<$crate::TrustDecision> {
                $crate::Policy::on_discovered(__fsnode_plugin()?, &node, &peer)
            }

            fn on_offer(
                node: $crate::NodeFacts,
                peer: $crate::Peer,
            ) -> ::core::option::Option<$crate::TrustDecision> {
                $crate::Policy::on_offer(__fsnode_plugin()?, &node, &peer)
            }

            fn on_transfer(
                node: $crate::NodeFacts,
                peer: $crate::Peer,
                file: $crate::FileMeta,
            ) -> ::core::option::Option<$crate::AcceptDecision> {
                $crate::Policy::on_transfer(__fsnode_plugin()?, &node, &peer, &file)
            }

            fn schedule(
                node: $crate::NodeFacts,
                queue: ::std::vec::Vec<$crate::Queued>,
                connected: ::std::vec::Vec<::std::string::String>,
            ) -> ::core::option::Option<::std::vec::Vec<::std::string::String>> {
                $crate::Policy::schedule(__fsnode_plugin()?, &node, &queue, &connected)
            }

            fn map_mode(
                node: $crate::NodeFacts,
                file: $crate::FileMeta,
            ) -> ::core::option::Option<u32> {
                $crate::Policy::map_mode(__fsnode_plugin()?, &node, &file)
            }
        }

        // Component exports exist only in the wasm build: their names ("…/decide@0.1.0#…")
        // are not symbols a native linker accepts, and native builds are for unit tests.
        #[cfg(target_family = "wasm")]
        $crate::export!(__FsnodePluginExport with_types_in $crate);
    };
}

//! The seed protocol's behaviour (step 3, "Receive Offer"): a device that sends this node an
//! offer is added to the trusted list automatically. Discoveries are left to the operator.

use fsnode_plugin::{NodeFacts, Peer, Policy, TrustDecision};

pub struct TrustOnOffer;

impl Policy for TrustOnOffer {
    fn configure(_config: &str) -> Result<Self, String> {
        Ok(Self)
    }

    fn on_offer(&self, _node: &NodeFacts, _peer: &Peer) -> Option<TrustDecision> {
        Some(TrustDecision::Trust)
    }
}

fsnode_plugin::plugin!(TrustOnOffer);

//! Trust decided by the operator or by policy, and the authorization requests of devices that
//! are not trusted.

use super::*;

impl Core {
    /// Trusts `peer` on a plugin's word: the same event as `fsnode trust add`, by the plugin.
    pub(super) fn trust_by_policy(&mut self, peer: &DeviceId, plugin: String, now: Now) {
        if self.state.is_trusted(peer) {
            return;
        }
        let name = self
            .state
            .peers
            .get(peer)
            .map(|p| p.name.clone())
            .filter(|n| !n.is_empty());
        self.journal_held_back(peer, now);
        self.emit(
            Event::PeerAuthorized {
                peer: peer.clone(),
                name,
                by: Authority::Policy { plugin },
            },
            now,
        );
        self.out.push_back(Output::Effect(Effect::TrustChanged));
    }

    /// Records that an untrusted device asked to connect, at most once per interval.
    pub(super) fn request_authorization(&mut self, peer: &DeviceId, now: Now) {
        let known = self.state.peers.get(peer);
        let recently = known
            .and_then(|p| p.requested_at_ms)
            .is_some_and(|at| now.wall_ms - at < REQUEST_JOURNAL_INTERVAL_MS);
        if recently {
            return;
        }
        let (name, device_type, address) = known.map_or_else(
            || (String::new(), DeviceType::Unknown, None),
            |p| {
                (
                    p.name.clone(),
                    p.device_type,
                    p.addresses.first().map(|ip| SocketAddr::new(*ip, p.port)),
                )
            },
        );
        self.emit(
            Event::AuthorizationRequested {
                peer: peer.clone(),
                name,
                device_type,
                address,
            },
            now,
        );
    }

    /// Resolves an operator-typed device among known devices (only trusted ones if
    /// `trusted_only`); the error is the reply.
    pub(super) fn resolve(&self, typed: &str, trusted_only: bool) -> Result<DeviceId, Refusal> {
        let known = self
            .state
            .peers
            .iter()
            .filter(|(_, p)| !trusted_only || p.trusted)
            .map(|(id, _)| id);
        trust::resolve(typed, known).map_err(|err| match &err {
            ResolveError::Ambiguous { candidates, .. } => Refusal {
                kind: RefusalKind::Ambiguous,
                message: err.to_string(),
                candidates: candidates.clone(),
            },
            ResolveError::NoMatch(_) => Refusal::new(RefusalKind::NotFound, err.to_string()),
            ResolveError::Invalid(_) => Refusal::new(RefusalKind::BadRequest, err.to_string()),
        })
    }
}

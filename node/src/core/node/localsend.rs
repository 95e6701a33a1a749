//! LocalSend devices in the node (PROTOCOL.md section 7): their announcements and `register`s
//! through admission, the trust and fingerprint checks of a `prepare-upload`, the uploads it
//! expects written through the receive store, and this node's own sends to LocalSend devices.
//! The data and the rules are `core::localsend`; this box journals, asks policy and the store.

use super::*;
use crate::core::localsend::{
    self as ls, CallFor, FileState, LocalSend, Outgoing, Pending, PinCheck, Request, Session,
    SessionFile, SessionIds, Stage, Upload, wire,
};
use crate::core::names;
use crate::core::transfer::wire::RejectCode;
use crate::core::{Side, TransferStatus};

/// Why an upload that broke off is not resumed.
const NO_RESUME: &str = "LocalSend cannot resume: the sender must send the file again";

impl Core {
    /// Speaks LocalSend from now on (the shell serves HTTPS and multicast for it).
    pub fn enable_localsend(&mut self, settings: ls::Settings, now: Instant) {
        self.localsend = Some(Box::new(LocalSend::new(settings, now)));
    }

    /// The LocalSend side's state, for tests.
    pub fn localsend(&self) -> Option<&LocalSend> {
        self.localsend.as_deref()
    }

    fn ls(&mut self) -> &mut LocalSend {
        self.localsend
            .as_deref_mut()
            .expect("LocalSend inputs come only when it is on")
    }

    fn ls_effect(&mut self, effect: ls::Effect) {
        self.out
            .push_back(Output::Effect(Effect::LocalSend(effect)));
    }

    fn ls_reply(&mut self, req: ls::RequestId, status: u16, body: Vec<u8>) {
        self.ls_effect(ls::Effect::Reply { req, status, body });
    }

    fn ls_refuse(&mut self, req: ls::RequestId, status: u16, why: &str) {
        tracing::debug!(req, status, "LocalSend request refused: {why}");
        self.ls_reply(req, status, ls::message(why));
    }

    fn ls_info_body(&self, announce: Option<bool>) -> Vec<u8> {
        let ls = self.localsend.as_deref().expect("on");
        serde_json::to_vec(&ls.info(&self.me.name, announce)).unwrap_or_default()
    }

    pub(super) fn on_localsend(&mut self, input: ls::Input, now: Now) {
        if self.localsend.is_none() {
            return;
        }
        match input {
            ls::Input::Request { req, from, request } => match request {
                Request::Info => {
                    let body = self.ls_info_body(None);
                    self.ls_reply(req, 200, body);
                }
                Request::Register { body } => {
                    let port = self.ls().settings.port;
                    match wire::decode_info(&body).and_then(|info| info.claim(port)) {
                        Ok(claim) => {
                            self.ls_heard(&claim, from.ip(), now);
                            let body = self.ls_info_body(None);
                            self.ls_reply(req, 200, body);
                        }
                        Err(err) => self.ls_refuse(req, 400, &err.to_string()),
                    }
                }
                Request::PrepareUpload { pin, body, nonce } => {
                    self.ls_prepare(req, from, pin, &body, nonce, now)
                }
                Request::Upload {
                    session,
                    file,
                    token,
                    length,
                } => self.ls_upload(req, from, &session, &file, &token, length, now),
                Request::Cancel { session } => self.ls_cancel_session(req, from, &session, now),
            },
            ls::Input::Body { req, data } => self.ls_body(req, data, now),
            ls::Input::BodyEnd { req } => self.ls_body_end(req, now),
            ls::Input::Gone { req } => self.ls_gone(req, now),
            ls::Input::Datagram { from, data } => {
                let port = self.ls().settings.port;
                if let Ok(claim) = wire::decode_info(&data).and_then(|info| info.claim(port)) {
                    self.ls_announced(&claim, from.ip(), now);
                }
            }
            ls::Input::Probed {
                ip,
                port,
                claimed,
                presented,
            } => self.ls_probed(ip, port, claimed, presented, now),
            ls::Input::Answered { call, result } => self.ls_answered(call, result, now),
            ls::Input::Uploaded { id, result } => self.ls_uploaded(id, result, now),
        }
    }

    // --- discovery ------------------------------------------------------------------------

    /// A device announced itself or registered: unauthenticated, so for a trusted device it is
    /// only a place to try (nothing stored), and an untrusted one goes through admission.
    fn ls_heard(&mut self, claim: &wire::Claim, ip: IpAddr, now: Now) {
        if claim.fingerprint == self.ls().settings.fingerprint {
            return;
        }
        let id = DeviceId::from_localsend_fingerprint(&claim.fingerprint);
        let addr = SocketAddr::new(ip, claim.port);
        if self.state.is_trusted(&id) {
            self.ls().last_heard.insert(id.clone(), (addr, now.instant));
            self.ls_try_send(&id, now);
            return;
        }
        self.ls_sighting(&id, claim, ip, now);
    }

    /// Admission for an untrusted LocalSend device: held, and its changes journaled within
    /// its budget, as for an mDNS sighting. `false` when it was dropped.
    fn ls_sighting(&mut self, id: &DeviceId, claim: &wire::Claim, ip: IpAddr, now: Now) -> bool {
        let sighting = Sighting {
            name: claim.alias.clone(),
            device_type: claim.device_type,
            addresses: vec![ip],
            port: claim.port,
        };
        self.seen_untrusted(id.clone(), sighting, Some(ip), false, now);
        self.admission.holds(id)
    }

    fn ls_announced(&mut self, claim: &wire::Claim, ip: IpAddr, now: Now) {
        if claim.fingerprint == self.ls().settings.fingerprint {
            return;
        }
        self.ls_heard(claim, ip, now);
        if claim.announce && self.ls().may_answer(ip, now.instant) {
            let to = SocketAddr::new(ip, claim.port);
            let call = self.ls().call(CallFor::Register {
                to,
                fingerprint: claim.fingerprint,
            });
            let body = self.ls_info_body(None);
            self.ls_effect(ls::Effect::Call {
                call,
                to,
                fingerprint: claim.fingerprint,
                path: ls::PATH_REGISTER.into(),
                body,
            });
        }
    }

    // --- receiving: prepare-upload --------------------------------------------------------

    fn ls_prepare(
        &mut self,
        req: ls::RequestId,
        from: SocketAddr,
        pin: Option<String>,
        body: &[u8],
        nonce: [u8; 32],
        now: Now,
    ) {
        let ip = from.ip();
        if self.ls().pending.len() >= ls::MAX_PENDING {
            return self.ls_refuse(req, 429, "too many requests at once; try again");
        }
        if self.ls().pin_locked(ip, now.instant) {
            return self.ls_refuse(req, 429, "too many wrong PINs; wait a minute");
        }
        let pin_check = self.ls().check_pin(pin.as_deref(), ip, now.instant);
        if pin_check == PinCheck::Wrong {
            return self.ls_refuse(req, 401, "PIN required");
        }
        let port = self.ls().settings.port;
        let (info, files) = match wire::decode_prepare(body) {
            Ok(decoded) => decoded,
            Err(err) => return self.ls_refuse(req, 400, &err.to_string()),
        };
        let claim = match info.claim(port) {
            Ok(claim) => claim,
            Err(err) => return self.ls_refuse(req, 403, &err.to_string()),
        };
        if claim.fingerprint == self.ls().settings.fingerprint {
            return self.ls_refuse(req, 403, "that is this node's own fingerprint");
        }
        if files.is_empty() {
            return self.ls_reply(req, 204, Vec::new());
        }
        let device = DeviceId::from_localsend_fingerprint(&claim.fingerprint);
        let ls = self.ls();
        let busy = ls.sessions.len() >= ls::MAX_SESSIONS
            || ls.sessions.values().any(|s| s.device == device)
            || ls.pending.values().any(|p| p.device == device);
        if busy {
            return self.ls_refuse(req, 409, "blocked by another session");
        }
        let decided = vec![None; files.len()];
        self.ls().pending.insert(
            req,
            Pending {
                from,
                device,
                claim,
                files,
                nonce,
                pin_ok: pin_check == PinCheck::Right,
                stage: Stage::Trust,
                decided,
                space_check: None,
            },
        );
        self.ls_advance(req, now);
    }

    /// Takes a waiting `prepare-upload` as far as it can go now: trust, then the fingerprint
    /// check, then policy on the files, then the free space.
    fn ls_advance(&mut self, req: ls::RequestId, now: Now) {
        loop {
            let Some(pending) = self.ls().pending.get(&req).cloned() else {
                return;
            };
            match pending.stage {
                Stage::Trust => {
                    if pending.pin_ok || self.state.is_trusted(&pending.device) {
                        self.ls_stage(req, Stage::Verify);
                        continue;
                    }
                    let admitted =
                        self.ls_sighting(&pending.device, &pending.claim, pending.from.ip(), now);
                    if !admitted || !self.admission.may_ask(&pending.device, now.instant) {
                        // Not admitted, or asked about within the minute: refused without a
                        // question or a record.
                        self.ls().pending.remove(&req);
                        return self.ls_refuse(req, 403, "not trusted by this node");
                    }
                    let question = Question::OnOffer {
                        peer: self.peer_facts(&pending.device),
                    };
                    return self.ask(question, Waiting::LocalSendTrust { req }, now);
                }
                Stage::Verify => {
                    let ip = pending.from.ip();
                    let (fingerprint, port) = (pending.claim.fingerprint, pending.claim.port);
                    if self.ls().is_bound(&fingerprint, ip, now.instant) {
                        self.ls_stage(req, Stage::Files);
                        continue;
                    }
                    let probe = (ip, port, fingerprint);
                    if !self.ls().probing.contains(&probe) {
                        self.ls().probing.push(probe);
                        self.ls_effect(ls::Effect::Probe {
                            ip,
                            port,
                            claimed: fingerprint,
                        });
                    }
                    return;
                }
                Stage::Files => {
                    if pending.pin_ok && !self.state.is_trusted(&pending.device) {
                        // The operator's PIN and a fingerprint verified at this address.
                        self.admission.admit(
                            &pending.device,
                            Some(pending.from.ip()),
                            true,
                            now.instant,
                        );
                        self.ls_name(&pending, now);
                        self.trust_by_policy(&pending.device, "localsend-pin".into(), now);
                    }
                    let peer = self.peer_facts(&pending.device);
                    for (index, offered) in pending.files.iter().enumerate() {
                        if let Err(reason) = names::check_name(&offered.name) {
                            self.ls_decided(req, index, Err(reason.to_string()), now);
                            continue;
                        }
                        let question = Question::OnTransfer {
                            peer: peer.clone(),
                            file: FileFacts {
                                id: TransferId([0; 16]),
                                name: offered.name.clone(),
                                size: offered.size,
                                mime: offered.mime.clone(),
                                mode: None,
                                mtime: offered.mtime,
                            },
                        };
                        self.ask(question, Waiting::LocalSendFile { req, index }, now);
                    }
                    return self.ls_files_decided(req, now);
                }
                Stage::Space => return,
            }
        }
    }

    fn ls_stage(&mut self, req: ls::RequestId, stage: Stage) {
        if let Some(pending) = self.ls().pending.get_mut(&req) {
            pending.stage = stage;
        }
    }

    /// A trusted device's name and address, verified now: stored (a fingerprint verified at
    /// that address is the authentication LocalSend allows).
    fn ls_name(&mut self, pending: &Pending, now: Now) {
        let known = self.state.peers.get(&pending.device);
        let same = known.is_some_and(|p| {
            p.name == pending.claim.alias
                && p.addresses == [pending.from.ip()]
                && p.port == pending.claim.port
        });
        if !same {
            self.emit(
                Event::PeerDiscovered {
                    peer: pending.device.clone(),
                    name: pending.claim.alias.clone(),
                    device_type: pending.claim.device_type,
                    addresses: vec![pending.from.ip()],
                    port: pending.claim.port,
                },
                now,
            );
        }
    }

    /// Policy answered whether to trust the sender of `prepare-upload` `req`.
    pub(super) fn ls_trust_decided(&mut self, req: ls::RequestId, decision: Decision, now: Now) {
        let Some(pending) = self.ls().pending.get(&req).cloned() else {
            return;
        };
        match decision {
            Decision::Trust {
                answer: TrustAnswer::Trust,
                plugin: Some(plugin),
            } => {
                self.trust_by_policy(&pending.device, plugin, now);
                self.ls_stage(req, Stage::Verify);
                self.ls_advance(req, now);
            }
            Decision::Trust { answer, .. } => {
                if answer != TrustAnswer::Ignore {
                    self.request_authorization(&pending.device, now);
                }
                self.ls().pending.remove(&req);
                self.ls_refuse(
                    req,
                    403,
                    "not trusted by this node: its operator can run `fsnode trust add` with this device's id",
                );
            }
            _ => {}
        }
    }

    /// Policy decided file `index` of `prepare-upload` `req` (`Ok`: accepted, into that
    /// subdirectory).
    pub(super) fn ls_decided(
        &mut self,
        req: ls::RequestId,
        index: usize,
        decided: Result<Option<String>, String>,
        now: Now,
    ) {
        if let Some(slot) = self
            .ls()
            .pending
            .get_mut(&req)
            .and_then(|p| p.decided.get_mut(index))
        {
            *slot = Some(decided);
        }
        self.ls_files_decided(req, now);
    }

    /// Once every file is decided: the free space for the accepted ones is checked (the store
    /// prepares the first one's `.part`, counting the whole session's bytes).
    fn ls_files_decided(&mut self, req: ls::RequestId, now: Now) {
        let Some(pending) = self.ls().pending.get(&req).cloned() else {
            return;
        };
        if pending.stage != Stage::Files || pending.decided.iter().any(Option::is_none) {
            return;
        }
        let ids = SessionIds::derive(&pending.nonce, pending.files.len());
        let accepted: Vec<usize> = (0..pending.files.len())
            .filter(|i| matches!(pending.decided[*i], Some(Ok(_))))
            .collect();
        let Some(&first) = accepted.first() else {
            self.ls_record_refusals(&pending, &ids, now);
            self.ls().pending.remove(&req);
            return self.ls_refuse(req, 403, "every file was refused");
        };
        let total: u64 = accepted
            .iter()
            .map(|i| pending.files[*i].size)
            .fold(0, u64::saturating_add);
        let name = routed_name(&pending, first);
        if let Some(p) = self.ls().pending.get_mut(&req) {
            p.stage = Stage::Space;
            p.space_check = Some(ids.transfers[first]);
        }
        self.out.push_back(Output::Effect(Effect::Store {
            id: ids.transfers[first],
            // `size` is what the store checks the free space for: the whole session.
            op: StoreOp::Prepare { name, size: total },
        }));
        let _ = now;
    }

    /// Journals the refused files of a session (queued, then rejected with the reason).
    fn ls_record_refusals(&mut self, pending: &Pending, ids: &SessionIds, now: Now) {
        let mut delivered = Vec::new();
        for (index, offered) in pending.files.iter().enumerate() {
            let Some(Err(reason)) = &pending.decided[index] else {
                continue;
            };
            let id = ids.transfers[index];
            self.ls_queue_receive(id, pending, offered, None, now);
            let code = if names::check_name(&offered.name).is_err() {
                RejectCode::Name
            } else {
                RejectCode::Policy
            };
            self.emit(
                Event::TransferRejected {
                    id,
                    reason: reason.clone(),
                    code: Some(code),
                },
                now,
            );
            delivered.push(id);
        }
        if !delivered.is_empty() {
            // The HTTP answer carries the refusal: nothing is left to deliver.
            self.emit(Event::OutcomesDelivered { ids: delivered }, now);
        }
    }

    fn ls_queue_receive(
        &mut self,
        id: TransferId,
        pending: &Pending,
        offered: &wire::Offered,
        dir: Option<String>,
        now: Now,
    ) {
        self.emit(
            Event::TransferQueued {
                id,
                peer: pending.device.clone(),
                direction: Direction::Receive,
                name: offered.name.clone(),
                size: offered.size,
                path: None,
                mime: Some(offered.mime.clone()),
                mode: None,
                mtime: offered.mtime,
                sha256: offered.sha256,
                dir,
            },
            now,
        );
    }

    /// The store answered the space check of `prepare-upload` `req`.
    fn ls_space_checked(&mut self, req: ls::RequestId, result: StoreResult, now: Now) {
        let Some(pending) = self.ls().pending.remove(&req) else {
            return;
        };
        let ids = SessionIds::derive(&pending.nonce, pending.files.len());
        if let Some(id) = pending.space_check {
            self.out.push_back(Output::Effect(Effect::Store {
                id,
                op: StoreOp::DeletePart,
            }));
            self.out.push_back(Output::Effect(Effect::Store {
                id,
                op: StoreOp::Close,
            }));
        }
        let refused = match result {
            StoreResult::Prepared { .. } => None,
            StoreResult::PrepareFailed { reason } => Some(reason),
            other => Some(format!("unexpected store answer {other:?}")),
        };
        if let Some(reason) = refused {
            // Every accepted file is refused with the store's reason (no space, a name the
            // file system refuses): journaled so the operator sees why.
            let no_space = reason.starts_with(crate::core::transfer::NO_SPACE);
            let mut pending = pending;
            for slot in pending.decided.iter_mut() {
                if matches!(slot, Some(Ok(_))) {
                    *slot = Some(Err(reason.clone()));
                }
            }
            self.ls_record_refusals(&pending, &ids, now);
            let status = if no_space { 507 } else { 500 };
            return self.ls_refuse(req, status, &reason);
        }
        self.ls_record_refusals(&pending, &ids, now);
        let mut files = BTreeMap::new();
        let mut tokens = BTreeMap::new();
        for (index, offered) in pending.files.iter().enumerate() {
            let Some(Ok(dir)) = &pending.decided[index] else {
                continue;
            };
            let id = ids.transfers[index];
            self.ls_queue_receive(id, &pending, offered, dir.clone(), now);
            let chunks = offered.size.div_ceil(u64::from(ls::CHUNK));
            self.emit(
                Event::TransferStarted {
                    id,
                    chunk_size: ls::CHUNK,
                    chunks,
                    start_chunk: 0,
                },
                now,
            );
            self.emit(
                Event::TransferAccepted {
                    id,
                    start_chunk: 0,
                    window: 0,
                },
                now,
            );
            tokens.insert(offered.file_id.clone(), ids.tokens[index].clone());
            files.insert(
                offered.file_id.clone(),
                SessionFile {
                    transfer: id,
                    token: ids.tokens[index].clone(),
                    name: routed_name(&pending, index),
                    size: offered.size,
                    sha256: offered.sha256,
                    mtime: offered.mtime,
                    state: FileState::Expected,
                },
            );
        }
        self.ls().sessions.insert(
            ids.session.clone(),
            Session {
                device: pending.device.clone(),
                ip: pending.from.ip(),
                files,
                last_activity: now.instant,
            },
        );
        let body = serde_json::to_vec(&wire::PrepareResponse {
            session_id: ids.session,
            files: tokens,
        })
        .unwrap_or_default();
        self.ls_reply(req, 200, body);
    }

    fn ls_probed(
        &mut self,
        ip: IpAddr,
        port: u16,
        claimed: [u8; 32],
        presented: Result<[u8; 32], String>,
        now: Now,
    ) {
        self.ls().probing.retain(|p| *p != (ip, port, claimed));
        let verified = presented.as_ref().is_ok_and(|p| *p == claimed);
        if verified {
            self.ls().bind(claimed, ip, now.instant);
        }
        let waiting: Vec<ls::RequestId> = self
            .ls()
            .pending
            .iter()
            .filter(|(_, p)| {
                p.stage == Stage::Verify
                    && p.from.ip() == ip
                    && p.claim.port == port
                    && p.claim.fingerprint == claimed
            })
            .map(|(req, _)| *req)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let device = DeviceId::from_localsend_fingerprint(&claimed);
        if !verified {
            let shown = match &presented {
                Ok(other) => hex::encode(other),
                Err(why) => format!("none ({why})"),
            };
            self.record_mismatch(&device, Some(SocketAddr::new(ip, port)), shown, now);
            for req in waiting {
                self.ls().pending.remove(&req);
                self.ls_refuse(
                    req,
                    403,
                    "the fingerprint could not be verified at the sender's address",
                );
            }
            return;
        }
        for req in waiting {
            if let Some(pending) = self.ls().pending.get(&req).cloned()
                && self.state.is_trusted(&pending.device)
            {
                self.ls_name(&pending, now);
            }
            self.ls_stage(req, Stage::Files);
            self.ls_advance(req, now);
        }
    }

    // --- receiving: uploads ---------------------------------------------------------------

    #[expect(clippy::too_many_arguments, reason = "the upload request's parts")]
    fn ls_upload(
        &mut self,
        req: ls::RequestId,
        from: SocketAddr,
        session: &str,
        file: &str,
        token: &str,
        length: Option<u64>,
        now: Now,
    ) {
        let ls = self.ls();
        let Some(s) = ls.sessions.get_mut(session) else {
            return self.ls_refuse(req, 403, "no such session");
        };
        if s.ip != from.ip() {
            return self.ls_refuse(
                req,
                403,
                "uploads of this session come from another address",
            );
        }
        let Some(f) = s.files.get_mut(file).filter(|f| f.token == token) else {
            return self.ls_refuse(req, 403, "invalid token");
        };
        if f.state != FileState::Expected {
            return self.ls_refuse(req, 409, "this file was uploaded already (or is being)");
        }
        if length.is_some_and(|l| l != f.size) {
            return self.ls_refuse(req, 400, "the body's length is not the file's size");
        }
        f.state = FileState::Running(req);
        let (id, name, size) = (f.transfer, f.name.clone(), f.size);
        s.last_activity = now.instant;
        ls.uploads.insert(
            req,
            Upload {
                session: session.to_owned(),
                file: file.to_owned(),
                transfer: id,
                size,
                prepared: false,
                written: 0,
                durable: 0,
                next_sync: ls::SYNC_EVERY,
                in_flight: 0,
                owed: false,
                ended: false,
            },
        );
        // A file sent again after a broken upload is a new upload: a stale `.part` goes first.
        for op in [StoreOp::DeletePart, StoreOp::Prepare { name, size }] {
            self.out.push_back(Output::Effect(Effect::Store { id, op }));
        }
    }

    fn ls_body(&mut self, req: ls::RequestId, data: Vec<u8>, now: Now) {
        let Some(upload) = self.ls().uploads.get_mut(&req) else {
            return;
        };
        if upload.ended || !upload.prepared {
            return;
        }
        let len = data.len() as u64;
        if upload.written.saturating_add(len) > upload.size {
            let reason = format!(
                "the sender sent more than the {} bytes it announced",
                upload.size
            );
            return self.ls_fail_upload(req, &reason, Some(400), now);
        }
        let offset = upload.written;
        upload.written += len;
        let sync = upload.written >= upload.next_sync && upload.written < upload.size;
        if sync {
            upload.next_sync = upload.written + ls::SYNC_EVERY;
        }
        upload.in_flight += 1;
        let proceed = upload.in_flight < ls::WINDOW;
        upload.owed = !proceed;
        let (id, session) = (upload.transfer, upload.session.clone());
        if let Some(s) = self.ls().sessions.get_mut(&session) {
            s.last_activity = now.instant;
        }
        self.out.push_back(Output::Effect(Effect::Store {
            id,
            op: StoreOp::Append { offset, data, sync },
        }));
        if proceed {
            self.ls_effect(ls::Effect::Proceed { req });
        }
    }

    fn ls_body_end(&mut self, req: ls::RequestId, now: Now) {
        let Some(upload) = self.ls().uploads.get_mut(&req) else {
            return;
        };
        if upload.ended || !upload.prepared {
            return;
        }
        if upload.written != upload.size {
            let reason = format!(
                "the body ended after {} of {} bytes; {NO_RESUME}",
                upload.written, upload.size
            );
            return self.ls_fail_upload(req, &reason, Some(400), now);
        }
        upload.ended = true;
        let (id, session, file) = (upload.transfer, upload.session.clone(), upload.file.clone());
        let Some(f) = self
            .ls()
            .sessions
            .get(&session)
            .and_then(|s| s.files.get(&file))
            .cloned()
        else {
            return;
        };
        let op = StoreOp::FinalizeStream {
            sha256: f.sha256,
            mode: None,
            mtime: f.mtime,
        };
        let question = Question::MapMode {
            file: FileFacts {
                id,
                name: f.name.clone(),
                size: f.size,
                mime: self
                    .state
                    .transfers
                    .get(&id)
                    .and_then(|t| t.mime.clone())
                    .unwrap_or_default(),
                mode: None,
                mtime: f.mtime,
            },
        };
        self.ask(question, Waiting::Finalize { id, op }, now);
    }

    fn ls_gone(&mut self, req: ls::RequestId, now: Now) {
        if self.ls().pending.remove(&req).is_some() {
            return;
        }
        if let Some(upload) = self.ls().uploads.get(&req) {
            let reason = format!(
                "the upload stopped after {} of {} bytes; {NO_RESUME}",
                upload.written, upload.size
            );
            self.ls_fail_upload(req, &reason, None, now);
        }
    }

    /// Upload `req` failed: its transfer fails, its `.part` goes, the request gets `status`.
    fn ls_fail_upload(&mut self, req: ls::RequestId, reason: &str, status: Option<u16>, now: Now) {
        let Some(upload) = self.ls().uploads.remove(&req) else {
            return;
        };
        self.ls_finish_file(&upload.session, &upload.file);
        let id = upload.transfer;
        self.emit(
            Event::TransferFailed {
                id,
                reason: reason.to_owned(),
            },
            now,
        );
        self.emit(Event::OutcomesDelivered { ids: vec![id] }, now);
        for op in [StoreOp::DeletePart, StoreOp::Close] {
            self.out.push_back(Output::Effect(Effect::Store { id, op }));
        }
        if let Some(status) = status {
            self.ls_refuse(req, status, reason);
        }
    }

    /// Marks a session's file finished; a session whose files all are ends.
    fn ls_finish_file(&mut self, session: &str, file: &str) {
        let ls = self.ls();
        if let Some(s) = ls.sessions.get_mut(session) {
            if let Some(f) = s.files.get_mut(file) {
                f.state = FileState::Finished;
            }
            if s.is_over() {
                ls.sessions.remove(session);
            }
        }
    }

    /// A store result for a LocalSend transfer; `false` if `id` is not one.
    pub(super) fn ls_store(&mut self, id: TransferId, result: StoreResult, now: Now) -> bool {
        let Some(ls) = self.localsend.as_deref() else {
            return false;
        };
        if let Some(req) = ls.upload_of(&id) {
            self.ls_upload_stored(req, result, now);
            return true;
        }
        let space = ls
            .pending
            .iter()
            .find(|(_, p)| p.space_check == Some(id))
            .map(|(req, _)| *req);
        if let Some(req) = space {
            self.ls_space_checked(req, result, now);
            return true;
        }
        // A late answer for a transfer that failed or was cancelled meanwhile.
        ls.receiving(&id).is_some()
            || self
                .state
                .transfers
                .get(&id)
                .is_some_and(|t| t.peer.is_localsend())
    }

    fn ls_upload_stored(&mut self, req: ls::RequestId, result: StoreResult, now: Now) {
        let Some(upload) = self.ls().uploads.get_mut(&req) else {
            return;
        };
        let id = upload.transfer;
        match result {
            StoreResult::Prepared { .. } => {
                upload.prepared = true;
                self.ls_effect(ls::Effect::Proceed { req });
            }
            StoreResult::Appended { end, synced } => {
                upload.in_flight = upload.in_flight.saturating_sub(1);
                let chunk = u64::from(ls::CHUNK);
                let durable_before = upload.durable / chunk;
                let mut record = None;
                if synced && end > upload.durable {
                    upload.durable = end;
                    if end / chunk > durable_before {
                        record = Some((durable_before, end / chunk));
                    }
                }
                let owed = std::mem::take(&mut upload.owed);
                if let Some((start, end)) = record {
                    self.emit(Event::ChunksDurable { id, start, end }, now);
                }
                if owed {
                    self.ls_effect(ls::Effect::Proceed { req });
                }
            }
            StoreResult::Finalized { path } => {
                let (session, file) = (upload.session.clone(), upload.file.clone());
                self.ls().uploads.remove(&req);
                self.ls_finish_file(&session, &file);
                self.emit(
                    Event::TransferCompleted {
                        id,
                        path: Some(path),
                    },
                    now,
                );
                self.emit(Event::OutcomesDelivered { ids: vec![id] }, now);
                self.out.push_back(Output::Effect(Effect::Store {
                    id,
                    op: StoreOp::Close,
                }));
                self.ls_reply(req, 200, Vec::new());
            }
            StoreResult::FinalizeFailed { reason } => {
                let status = if reason.contains("SHA-256") { 422 } else { 500 };
                self.ls_fail_upload(req, &reason, Some(status), now);
            }
            StoreResult::PrepareFailed { reason } | StoreResult::NoSpace { reason } => {
                let status = if reason.contains("space") || reason.contains("full") {
                    507
                } else {
                    500
                };
                self.ls_fail_upload(req, &reason, Some(status), now);
            }
            StoreResult::WriteFailed { reason } => {
                self.ls_fail_upload(req, &reason, Some(500), now);
            }
            _ => {}
        }
    }

    fn ls_cancel_session(&mut self, req: ls::RequestId, from: SocketAddr, session: &str, now: Now) {
        if let Some(s) = self.ls().sessions.get(session) {
            if s.ip != from.ip() {
                return self.ls_refuse(req, 403, "this session belongs to another address");
            }
            let s = self.ls().sessions.remove(session).expect("present");
            for f in s.files.values() {
                if f.state == FileState::Finished {
                    continue;
                }
                self.ls_end_receive(f, Side::Remote, "cancelled by the LocalSend sender", now);
            }
            return self.ls_reply(req, 200, Vec::new());
        }
        // A receiver cancelling a session this node sends.
        let device = self
            .ls()
            .outgoing
            .iter()
            .find(|(_, o)| o.session.as_deref() == Some(session) && o.to.ip() == from.ip())
            .map(|(d, _)| d.clone());
        if let Some(device) = device
            && let Some(outgoing) = self.ls().outgoing.remove(&device)
        {
            if let Some(id) = outgoing.uploading {
                self.ls_effect(ls::Effect::StopUpload { id });
            }
            for (_, id) in &outgoing.files {
                if self.ls_send_live(id) {
                    self.emit(
                        Event::TransferCancelled {
                            id: *id,
                            by: Side::Remote,
                            reason: "cancelled by the LocalSend device".into(),
                        },
                        now,
                    );
                }
            }
        }
        self.ls_reply(req, 200, Vec::new());
    }

    /// Ends one received file that is not finished: cancelled (by `by`), its upload stopped.
    fn ls_end_receive(&mut self, f: &SessionFile, by: Side, reason: &str, now: Now) {
        if let FileState::Running(upload) = f.state {
            self.ls().uploads.remove(&upload);
            self.ls_refuse(upload, 409, reason);
        }
        let id = f.transfer;
        self.emit(
            Event::TransferCancelled {
                id,
                by,
                reason: reason.to_owned(),
            },
            now,
        );
        if by == Side::Local {
            self.emit(Event::OutcomesDelivered { ids: vec![id] }, now);
        }
        for op in [StoreOp::DeletePart, StoreOp::Close] {
            self.out.push_back(Output::Effect(Effect::Store { id, op }));
        }
    }

    /// The operator cancels transfer `id`; `false` if it is not a LocalSend transfer.
    pub(super) fn ls_cancel(&mut self, id: &TransferId, now: Now) -> bool {
        let Some(transfer) = self.state.transfers.get(id) else {
            return false;
        };
        if !transfer.peer.is_localsend() || self.localsend.is_none() {
            return false;
        }
        if transfer.status.is_finished() {
            return true;
        }
        let device = transfer.peer.clone();
        if transfer.direction == Direction::Receive {
            let found = self.ls().receiving(id).map(|(s, f)| (s.clone(), f.clone()));
            match found {
                Some((session, file)) => {
                    let f = self.ls().sessions[&session].files[&file].clone();
                    self.ls_finish_file(&session, &file);
                    self.ls_end_receive(&f, Side::Local, "cancelled by the operator", now);
                }
                None => {
                    self.emit(
                        Event::TransferCancelled {
                            id: *id,
                            by: Side::Local,
                            reason: "cancelled by the operator".into(),
                        },
                        now,
                    );
                    self.emit(Event::OutcomesDelivered { ids: vec![*id] }, now);
                }
            }
            return true;
        }
        self.emit(
            Event::TransferCancelled {
                id: *id,
                by: Side::Local,
                reason: "cancelled by the operator".into(),
            },
            now,
        );
        self.emit(Event::OutcomesDelivered { ids: vec![*id] }, now);
        let running = self
            .ls()
            .outgoing
            .get(&device)
            .is_some_and(|o| o.files.iter().any(|(_, f)| f == id));
        if running && let Some(outgoing) = self.ls().outgoing.remove(&device) {
            if let Some(id) = outgoing.uploading {
                self.ls_effect(ls::Effect::StopUpload { id });
            }
            self.ls_send_cancel(&outgoing);
            // The session's other files go again in a new one.
            self.ls_pause_rest(
                &outgoing,
                "the session was cancelled with a file of it",
                now,
            );
        }
        true
    }

    fn ls_send_cancel(&mut self, outgoing: &Outgoing) {
        let Some(session) = outgoing.session.clone() else {
            return;
        };
        let call = self.ls().call(CallFor::Cancel);
        self.ls_effect(ls::Effect::Call {
            call,
            to: outgoing.to,
            fingerprint: outgoing.fingerprint,
            path: format!("{}?sessionId={}", ls::PATH_CANCEL, query_escape(&session)),
            body: Vec::new(),
        });
    }

    // --- timers ---------------------------------------------------------------------------

    pub(super) fn ls_poll_timeout(&self) -> Option<Instant> {
        let ls = self.localsend.as_deref()?;
        let expiries = ls
            .sessions
            .values()
            .filter(|s| !s.running())
            .map(|s| s.last_activity + ls::SESSION_IDLE);
        let first = if ls.recovered {
            None
        } else {
            Some(self.started)
        };
        expiries
            .chain(ls.next_announce)
            .chain(ls.next_send_probe)
            .chain(first)
            .min()
    }

    pub(super) fn ls_timeout(&mut self, now: Now) {
        if self.localsend.is_none() {
            return;
        }
        if !self.ls().recovered {
            self.ls().recovered = true;
            self.ls_recover(now);
        }
        let idle: Vec<String> = self
            .ls()
            .sessions
            .iter()
            .filter(|(_, s)| {
                !s.running()
                    && now.instant.saturating_duration_since(s.last_activity) >= ls::SESSION_IDLE
            })
            .map(|(id, _)| id.clone())
            .collect();
        for session in idle {
            if let Some(s) = self.ls().sessions.remove(&session) {
                for f in s.files.values().filter(|f| f.state != FileState::Finished) {
                    let id = f.transfer;
                    self.emit(
                        Event::TransferFailed {
                            id,
                            reason: "the LocalSend sender did not upload it within 2 minutes"
                                .into(),
                        },
                        now,
                    );
                    self.emit(Event::OutcomesDelivered { ids: vec![id] }, now);
                    for op in [StoreOp::DeletePart, StoreOp::Close] {
                        self.out.push_back(Output::Effect(Effect::Store { id, op }));
                    }
                }
            }
        }
        if self.ls().next_announce.is_some_and(|at| at <= now.instant) {
            self.ls().next_announce = Some(now.instant + ls::ANNOUNCE_INTERVAL);
            let body = self.ls_info_body(Some(true));
            self.ls_effect(ls::Effect::Multicast { body });
        }
        if self
            .ls()
            .next_send_probe
            .is_some_and(|at| at <= now.instant)
        {
            self.ls().next_send_probe = Some(now.instant + ls::SEND_PROBE_INTERVAL);
            self.ls_try_all(now);
        }
    }

    /// Receives a restart interrupted cannot go on (LocalSend has no resume): they fail and
    /// their `.part` files go.
    fn ls_recover(&mut self, now: Now) {
        let interrupted: Vec<(TransferId, String)> = self
            .state
            .transfers
            .iter()
            .filter(|(_, t)| {
                t.peer.is_localsend()
                    && t.direction == Direction::Receive
                    && !t.status.is_finished()
            })
            .map(|(id, t)| {
                let name = match &t.dir {
                    Some(dir) => format!("{dir}/{}", t.name),
                    None => t.name.clone(),
                };
                (*id, name)
            })
            .collect();
        for (id, name) in interrupted {
            self.emit(
                Event::TransferFailed {
                    id,
                    reason: format!("the node stopped during the upload; {NO_RESUME}"),
                },
                now,
            );
            self.emit(Event::OutcomesDelivered { ids: vec![id] }, now);
            self.out.push_back(Output::Effect(Effect::Store {
                id,
                op: StoreOp::Discard { name },
            }));
            self.out.push_back(Output::Effect(Effect::Store {
                id,
                op: StoreOp::Close,
            }));
        }
    }

    // --- sending --------------------------------------------------------------------------

    /// Tries every trusted LocalSend device with sends waiting.
    pub(super) fn ls_try_all(&mut self, now: Now) {
        if self.localsend.is_none() {
            return;
        }
        let devices: std::collections::BTreeSet<DeviceId> = self
            .state
            .transfers
            .values()
            .filter(|t| {
                t.peer.is_localsend()
                    && t.direction == Direction::Send
                    && matches!(t.status, TransferStatus::Queued | TransferStatus::Paused)
            })
            .map(|t| t.peer.clone())
            .collect();
        for device in devices {
            self.ls_try_send(&device, now);
        }
    }

    fn ls_send_live(&self, id: &TransferId) -> bool {
        self.state
            .transfers
            .get(id)
            .is_some_and(|t| !t.status.is_finished())
    }

    /// Offers `device` the sends waiting for it (a `prepare-upload` of up to
    /// [`ls::MAX_SEND_BATCH`] files, pinned to its fingerprint), unless a session with it runs
    /// or the last attempt failed within [`ls::SEND_RETRY`].
    fn ls_try_send(&mut self, device: &DeviceId, now: Now) {
        if !self.state.is_trusted(device) {
            return;
        }
        let Some(fingerprint) = device.localsend_fingerprint() else {
            return;
        };
        let ls = self.ls();
        if ls.outgoing.contains_key(device)
            || ls.retry_at.get(device).is_some_and(|at| *at > now.instant)
        {
            return;
        }
        let heard = ls.last_heard.get(device).map(|(addr, _)| *addr);
        let stored = self
            .state
            .peers
            .get(device)
            .and_then(|p| Some(SocketAddr::new(*p.addresses.first()?, p.port)));
        let Some(to) = heard.or(stored) else {
            return;
        };
        let mut queued: Vec<(&TransferId, &Box<crate::core::TransferState>)> = self
            .state
            .transfers
            .iter()
            .filter(|(_, t)| {
                t.peer == *device
                    && t.direction == Direction::Send
                    && matches!(t.status, TransferStatus::Queued | TransferStatus::Paused)
                    && t.sha256.is_some()
                    && t.path.is_some()
            })
            .collect();
        queued.sort_by_key(|(id, t)| (t.queued_at_ms, **id));
        queued.truncate(ls::MAX_SEND_BATCH);
        if queued.is_empty() {
            return;
        }
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (id, t) in &queued {
            let file_id = id.to_string();
            entries.insert(
                file_id.clone(),
                wire::FileEntry {
                    id: file_id.clone(),
                    file_name: t.name.clone(),
                    size: t.size,
                    file_type: Some(
                        t.mime
                            .clone()
                            .unwrap_or_else(|| "application/octet-stream".into()),
                    ),
                    sha256: t.sha256.map(hex::encode),
                    preview: None,
                    metadata: t
                        .mtime
                        .and_then(wire::format_time)
                        .map(|modified| wire::Metadata {
                            modified: Some(modified),
                            accessed: None,
                        }),
                },
            );
            files.push((file_id, **id));
        }
        let name = self.me.name.clone();
        let info = self.ls().info(&name, None);
        let body = serde_json::to_vec(&wire::PrepareUpload {
            info,
            files: entries,
        })
        .unwrap_or_default();
        let call = self.ls().call(CallFor::Prepare {
            device: device.clone(),
        });
        self.ls().outgoing.insert(
            device.clone(),
            Outgoing {
                to,
                fingerprint,
                files,
                session: None,
                tokens: BTreeMap::new(),
                uploading: None,
            },
        );
        self.ls_effect(ls::Effect::Call {
            call,
            to,
            fingerprint,
            path: ls::PATH_PREPARE.into(),
            body,
        });
    }

    fn ls_answered(&mut self, call: ls::CallId, result: Result<(u16, Vec<u8>), String>, now: Now) {
        let Some(purpose) = self.ls().calls.remove(&call) else {
            return;
        };
        match purpose {
            CallFor::Cancel => {}
            CallFor::Register { to, fingerprint } => match result {
                Ok((200, body)) => {
                    // The answer came over TLS pinned to the claimed fingerprint: it is
                    // verified for that address.
                    self.ls().bind(fingerprint, to.ip(), now.instant);
                    let port = to.port();
                    if let Ok(claim) = wire::decode_info(&body).and_then(|i| i.claim(port))
                        && claim.fingerprint == fingerprint
                    {
                        self.ls_heard(&claim, to.ip(), now);
                    }
                }
                _ => {
                    // The fallback of spec 3.1: answer on the multicast group.
                    let body = self.ls_info_body(Some(false));
                    self.ls_effect(ls::Effect::Multicast { body });
                }
            },
            CallFor::Prepare { device } => self.ls_prepared(&device, result, now),
        }
    }

    fn ls_prepared(&mut self, device: &DeviceId, result: Result<(u16, Vec<u8>), String>, now: Now) {
        let Some(outgoing) = self.ls().outgoing.get(device).cloned() else {
            return;
        };
        let live: Vec<TransferId> = outgoing
            .files
            .iter()
            .map(|(_, id)| *id)
            .filter(|id| self.ls_send_live(id))
            .collect();
        let end = |core: &mut Self, retry: bool| {
            core.ls().outgoing.remove(device);
            if retry {
                core.ls()
                    .retry_at
                    .insert(device.clone(), now.instant + ls::SEND_RETRY);
            }
        };
        let (status, body) = match result {
            Ok(answer) => answer,
            Err(err) => {
                tracing::debug!(%device, "LocalSend prepare-upload failed: {err}");
                return end(self, true);
            }
        };
        match status {
            200 => {}
            204 => {
                for id in live {
                    self.emit(Event::TransferCompleted { id, path: None }, now);
                }
                return end(self, false);
            }
            401 | 403 => {
                let reason = if status == 401 {
                    "the LocalSend device asks for a PIN; fsnode sends only to devices without one"
                } else {
                    "the LocalSend device declined"
                };
                for id in live {
                    self.emit(
                        Event::TransferRejected {
                            id,
                            reason: reason.into(),
                            code: Some(RejectCode::Policy),
                        },
                        now,
                    );
                }
                return end(self, false);
            }
            _ => {
                tracing::debug!(%device, status, "LocalSend prepare-upload answered");
                return end(self, true);
            }
        }
        let Ok(answer) = wire::decode_prepare_response(&body) else {
            return end(self, true);
        };
        // The answer came over TLS pinned to the device's key: its address is authenticated.
        let known = self.state.peers.get(device);
        if known.is_none_or(|p| p.addresses != [outgoing.to.ip()] || p.port != outgoing.to.port()) {
            let (name, device_type) = known.map_or((String::new(), DeviceType::Unknown), |p| {
                (p.name.clone(), p.device_type)
            });
            self.emit(
                Event::PeerDiscovered {
                    peer: device.clone(),
                    name,
                    device_type,
                    addresses: vec![outgoing.to.ip()],
                    port: outgoing.to.port(),
                },
                now,
            );
        }
        for (file_id, id) in &outgoing.files {
            if !self.ls_send_live(id) {
                continue;
            }
            if answer.files.contains_key(file_id) {
                let size = self.state.transfers[id].size;
                self.emit(
                    Event::TransferStarted {
                        id: *id,
                        chunk_size: ls::CHUNK,
                        chunks: size.div_ceil(u64::from(ls::CHUNK)),
                        start_chunk: 0,
                    },
                    now,
                );
                self.emit(
                    Event::TransferAccepted {
                        id: *id,
                        start_chunk: 0,
                        window: 0,
                    },
                    now,
                );
            } else {
                self.emit(
                    Event::TransferRejected {
                        id: *id,
                        reason: "the LocalSend device declined this file".into(),
                        code: Some(RejectCode::Policy),
                    },
                    now,
                );
            }
        }
        if let Some(o) = self.ls().outgoing.get_mut(device) {
            o.session = Some(answer.session_id);
            o.tokens = answer.files;
        }
        self.ls_upload_next(device, now);
    }

    /// Uploads the next file of `device`'s session; ends the session after the last.
    fn ls_upload_next(&mut self, device: &DeviceId, now: Now) {
        let Some(outgoing) = self.ls().outgoing.get(device).cloned() else {
            return;
        };
        let next = outgoing.files.iter().find(|(file_id, id)| {
            outgoing.tokens.contains_key(file_id)
                && self
                    .state
                    .transfers
                    .get(id)
                    .is_some_and(|t| t.status == TransferStatus::Active)
        });
        let Some((file_id, id)) = next.cloned() else {
            self.ls().outgoing.remove(device);
            // More may wait beyond this session's batch.
            return self.ls_try_send(device, now);
        };
        let t = &self.state.transfers[&id];
        let (Some(file), size) = (t.path.clone(), t.size) else {
            return;
        };
        let path = format!(
            "{}?sessionId={}&fileId={}&token={}",
            ls::PATH_UPLOAD,
            query_escape(outgoing.session.as_deref().unwrap_or_default()),
            query_escape(&file_id),
            query_escape(&outgoing.tokens[&file_id]),
        );
        if let Some(o) = self.ls().outgoing.get_mut(device) {
            o.uploading = Some(id);
        }
        self.ls_effect(ls::Effect::Upload {
            id,
            to: outgoing.to,
            fingerprint: outgoing.fingerprint,
            path,
            file,
            size,
        });
    }

    fn ls_uploaded(&mut self, id: TransferId, result: Result<u16, String>, now: Now) {
        let device = self
            .ls()
            .outgoing
            .iter()
            .find(|(_, o)| o.uploading == Some(id))
            .map(|(d, _)| d.clone());
        let Some(device) = device else {
            return; // stopped: the transfer was cancelled meanwhile
        };
        if let Some(o) = self.ls().outgoing.get_mut(&device) {
            o.uploading = None;
        }
        if !self.ls_send_live(&id) {
            return self.ls_upload_next(&device, now);
        }
        match result {
            Ok(200 | 204) => {
                let chunks = self.state.transfers[&id].chunks;
                if chunks > 0 {
                    self.emit(
                        Event::ChunksDurable {
                            id,
                            start: 0,
                            end: chunks,
                        },
                        now,
                    );
                }
                self.emit(Event::TransferCompleted { id, path: None }, now);
                self.ls_upload_next(&device, now);
            }
            Ok(403 | 404 | 409 | 410) => {
                let Some(outgoing) = self.ls().outgoing.remove(&device) else {
                    return;
                };
                for (_, file) in &outgoing.files {
                    if self.ls_send_live(file) {
                        self.emit(
                            Event::TransferCancelled {
                                id: *file,
                                by: Side::Remote,
                                reason: "cancelled by the LocalSend device".into(),
                            },
                            now,
                        );
                    }
                }
            }
            Ok(status) => {
                let reason = if status == 422 {
                    "the LocalSend device found the file's SHA-256 wrong".to_owned()
                } else {
                    format!("the LocalSend device answered the upload with HTTP {status}")
                };
                self.emit(Event::TransferFailed { id, reason }, now);
                self.ls_upload_next(&device, now);
            }
            Err(err) => {
                let Some(outgoing) = self.ls().outgoing.remove(&device) else {
                    return;
                };
                self.ls()
                    .retry_at
                    .insert(device.clone(), now.instant + ls::SEND_RETRY);
                self.ls_send_cancel(&outgoing);
                let reason = format!(
                    "the upload broke off ({err}); sent again from the start when the device is seen"
                );
                self.ls_pause_rest(&outgoing, &reason, now);
            }
        }
    }

    /// The started sends of `outgoing` that did not finish wait for the next session.
    fn ls_pause_rest(&mut self, outgoing: &Outgoing, reason: &str, now: Now) {
        for (_, id) in &outgoing.files {
            let started = self.state.transfers.get(id).is_some_and(|t| {
                matches!(t.status, TransferStatus::Starting | TransferStatus::Active)
            });
            if started {
                self.emit(
                    Event::TransferPaused {
                        id: *id,
                        reason: reason.to_owned(),
                    },
                    now,
                );
            }
        }
    }
}

/// File `index`'s name under the receive directory, with policy's subdirectory.
fn routed_name(pending: &Pending, index: usize) -> String {
    let name = &pending.files[index].name;
    match &pending.decided[index] {
        Some(Ok(Some(dir))) => format!("{dir}/{name}"),
        _ => name.clone(),
    }
}

/// Percent-encodes a query value (RFC 3986: everything but unreserved characters).
fn query_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

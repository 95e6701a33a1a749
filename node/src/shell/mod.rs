//! The IO shell: everything that touches the outside world (clock, signals, sockets, files,
//! WebRTC) and turns it into inputs for the core and carries out its effects.

pub mod atomic_file;
pub mod commit;
pub mod control;
pub mod event_log;
pub mod followers;
pub mod local_names;
pub mod localsend;
pub mod mdns;
pub mod network;
pub mod policy;
pub mod rtc;
pub mod run;
pub mod runtime;
pub mod signaling;
pub mod sources;
pub mod store;
pub mod transfer_io;
pub mod trust_file;
pub mod watchers;
pub mod web;

//! The sans-IO core: identifiers, the event vocabulary and the state they fold into.
//!
//! Nothing in this module opens a socket or a file or reads a clock (clippy's
//! `disallowed-methods` enforces the clock and randomness rule; see `clippy.toml`). Time comes in
//! as a parameter. The drive-loop rule, after str0m: the shell makes one mutation, then drains
//! every output until the core asks for a timeout, then makes the next mutation.

pub mod admission;
pub mod device;
pub mod discovery;
pub mod event;
pub mod link;
pub mod localsend;
pub mod names;
pub mod negotiation;
pub mod node;
pub mod policy;
pub mod request;
pub mod router;
pub mod sdp;
pub mod signal;
pub mod state;
pub mod transfer;
pub mod transfer_id;
pub mod transfers;
pub mod trust;

pub use device::{DeviceId, DeviceIdError, DeviceType};
pub use event::{Authority, Direction, Event, Side, Stamped};
pub use state::{ConnectionState, PeerState, State, TransferState, TransferStatus};
pub use transfer_id::TransferId;

//! The IO shell: everything that touches the outside world (clock, signals, sockets, files,
//! WebRTC) and turns it into inputs for the core and carries out its effects.

pub mod clock;
pub mod rtc;
pub mod run;

//! Raw wasm exports over `sha2::Sha256` (no bindgen, no imports): the page writes input into
//! the buffer at `buffer()` and calls `update(slot, len)`; several hashes run at once in
//! separate slots (each chunk's hash, and the whole file's).
//!
//! ```text
//! let slot = begin();            // a free slot, or -1 when all are in use
//! update(slot, len);             // hashes buffer()[..len] (len <= BUFFER_BYTES)
//! let ptr = finish(slot);        // 32-byte digest at ptr; the slot is free again
//! ```

use sha2::{Digest, Sha256};
use std::sync::Mutex;

/// Bytes the page may hand over per `update`.
const BUFFER_BYTES: usize = 256 * 1024;
/// Hashes in progress at once.
const SLOTS: usize = 64;

struct Hasher {
    buffer: Vec<u8>,
    digest: [u8; 32],
    slots: Vec<Option<Sha256>>,
}

static HASHER: Mutex<Option<Hasher>> = Mutex::new(None);

fn with<T>(f: impl FnOnce(&mut Hasher) -> T) -> T {
    let mut guard = HASHER.lock().unwrap_or_else(|e| e.into_inner());
    let hasher = guard.get_or_insert_with(|| Hasher {
        buffer: vec![0; BUFFER_BYTES],
        digest: [0; 32],
        slots: (0..SLOTS).map(|_| None).collect(),
    });
    f(hasher)
}

/// Where the page writes input (valid for the module's life: the buffer never moves).
#[no_mangle]
pub extern "C" fn buffer() -> *mut u8 {
    with(|h| h.buffer.as_mut_ptr())
}

/// The size of the input buffer.
#[no_mangle]
pub extern "C" fn buffer_len() -> u32 {
    BUFFER_BYTES as u32
}

/// Starts a hash; returns its slot, or -1 when every slot is in use.
#[no_mangle]
pub extern "C" fn begin() -> i32 {
    with(|h| match h.slots.iter().position(Option::is_none) {
        Some(i) => {
            h.slots[i] = Some(Sha256::new());
            i as i32
        }
        None => -1,
    })
}

/// Hashes the first `len` bytes of the buffer into `slot`; 0 on success, -1 for a bad slot
/// or length.
#[no_mangle]
pub extern "C" fn update(slot: i32, len: u32) -> i32 {
    with(|h| {
        let len = len as usize;
        if len > BUFFER_BYTES {
            return -1;
        }
        let Hasher { buffer, slots, .. } = h;
        match usize::try_from(slot).ok().and_then(|i| slots.get_mut(i)) {
            Some(Some(state)) => {
                state.update(&buffer[..len]);
                0
            }
            _ => -1,
        }
    })
}

/// Finishes `slot`'s hash and frees the slot; returns where its 32-byte digest is (valid
/// until the next `finish`), or null for a bad slot.
#[no_mangle]
pub extern "C" fn finish(slot: i32) -> *const u8 {
    with(|h| {
        let state = usize::try_from(slot)
            .ok()
            .and_then(|i| h.slots.get_mut(i))
            .and_then(Option::take);
        match state {
            Some(state) => {
                h.digest.copy_from_slice(&state.finalize());
                h.digest.as_ptr()
            }
            None => std::ptr::null(),
        }
    })
}

/// Abandons `slot`'s hash (a cancelled transfer).
#[no_mangle]
pub extern "C" fn discard(slot: i32) {
    with(|h| {
        if let Some(s) = usize::try_from(slot).ok().and_then(|i| h.slots.get_mut(i)) {
            *s = None;
        }
    })
}

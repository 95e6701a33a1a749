//! Signaling messages and their framing (spec section 3.1, 3.2): newline-delimited JSON
//! objects over TCP. Everything here is pure: the TCP adapter feeds bytes in and writes the
//! encoded lines out.

use serde::{Deserialize, Serialize};

use super::{DeviceId, DeviceType};

/// Longest line accepted, not counting the `\n` (spec 3.1).
pub const MAX_LINE_BYTES: usize = 256 * 1024;
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u64 = 1;

/// A `hello` as received: `v` is checked separately so a wrong version can be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub id: DeviceId,
    pub name: String,
    pub device_type: DeviceType,
    pub port: u16,
}

/// One signaling message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    /// A `hello` whose `v` is not the integer 1.
    HelloWrongVersion,
    Offer {
        sdp: String,
        seq: u64,
    },
    Answer {
        sdp: String,
        seq: u64,
    },
    Candidate(Candidate),
    Bye {
        reason: String,
    },
    /// A `type` this build does not know: ignored (forward compatibility).
    Unknown,
}

/// A trickled ICE candidate; `candidate == ""` is end-of-candidates.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub candidate: String,
    #[serde(rename = "sdpMid", default)]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex", default)]
    pub sdp_mline_index: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LineError {
    #[error("a line exceeds the size limit ({MAX_LINE_BYTES} bytes for signaling)")]
    TooLong,
    #[error("a signaling line is not valid UTF-8")]
    NotUtf8,
    #[error("a signaling line is not a JSON object: {0}")]
    NotJson(String),
    #[error("a `{kind}` message is malformed: {reason}")]
    Malformed { kind: String, reason: String },
}

/// The wire form. Unknown keys are ignored by serde's default.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Wire {
    Hello {
        v: serde_json::Value,
        id: String,
        #[serde(default)]
        name: String,
        #[serde(default)]
        device_type: String,
        port: u16,
    },
    Offer {
        sdp: String,
        seq: u64,
    },
    Answer {
        sdp: String,
        seq: u64,
    },
    Candidate(Candidate),
    Bye {
        #[serde(default)]
        reason: String,
    },
}

impl Message {
    /// Decodes one line (without its `\n`).
    pub fn decode(line: &[u8]) -> Result<Message, LineError> {
        if line.len() > MAX_LINE_BYTES {
            return Err(LineError::TooLong);
        }
        let text = std::str::from_utf8(line).map_err(|_| LineError::NotUtf8)?;
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LineError::NotJson(e.to_string()))?;
        let kind = match value.get("type") {
            Some(serde_json::Value::String(kind)) => kind.clone(),
            _ => {
                return Err(LineError::NotJson(
                    "not an object with a string `type`".into(),
                ));
            }
        };
        if !matches!(
            kind.as_str(),
            "hello" | "offer" | "answer" | "candidate" | "bye"
        ) {
            return Ok(Message::Unknown);
        }
        let malformed = |reason: String| LineError::Malformed {
            kind: kind.clone(),
            reason,
        };
        let wire: Wire = serde_json::from_value(value).map_err(|e| malformed(e.to_string()))?;
        Ok(match wire {
            Wire::Hello {
                v,
                id,
                name,
                device_type,
                port,
            } => {
                if v.as_u64() != Some(PROTOCOL_VERSION) {
                    return Ok(Message::HelloWrongVersion);
                }
                let id = id.parse().map_err(|e| malformed(format!("id: {e}")))?;
                Message::Hello(Hello {
                    id,
                    name: clamp(name, super::discovery::MAX_NAME_BYTES),
                    device_type: DeviceType::from_wire(&device_type),
                    port,
                })
            }
            Wire::Offer { sdp, seq } => Message::Offer { sdp, seq },
            Wire::Answer { sdp, seq } => Message::Answer { sdp, seq },
            Wire::Candidate(candidate) => Message::Candidate(candidate),
            Wire::Bye { reason } => Message::Bye { reason },
        })
    }

    /// Encodes the message as one line, `\n` included.
    pub fn encode(&self) -> Vec<u8> {
        let wire = match self.clone() {
            Message::Hello(hello) => Wire::Hello {
                v: PROTOCOL_VERSION.into(),
                id: hello.id.to_string(),
                name: hello.name,
                device_type: hello.device_type.as_str().into(),
                port: hello.port,
            },
            Message::Offer { sdp, seq } => Wire::Offer { sdp, seq },
            Message::Answer { sdp, seq } => Wire::Answer { sdp, seq },
            Message::Candidate(candidate) => Wire::Candidate(candidate),
            Message::Bye { reason } => Wire::Bye { reason },
            // Never sent; encoded as a bye so a bug cannot put garbage on the wire.
            Message::HelloWrongVersion | Message::Unknown => Wire::Bye {
                reason: "error".into(),
            },
        };
        let mut line = serde_json::to_vec(&wire).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

fn clamp(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

/// Splits a byte stream into lines, never buffering more than its limit (by default the
/// signaling limit, `MAX_LINE_BYTES`).
#[derive(Debug)]
pub struct LineFramer {
    buf: Vec<u8>,
    max: usize,
}

impl Default for LineFramer {
    fn default() -> Self {
        Self::new(MAX_LINE_BYTES)
    }
}

impl LineFramer {
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Adds received bytes; returns the complete lines (without `\n`), or `TooLong` as soon as
    /// a line is known to exceed the limit (the connection is then closed).
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<Vec<u8>>, LineError> {
        let mut lines = Vec::new();
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            if self.buf.len() + pos > self.max {
                return Err(LineError::TooLong);
            }
            let mut line = std::mem::take(&mut self.buf);
            line.extend_from_slice(&bytes[..pos]);
            lines.push(line);
            bytes = &bytes[pos + 1..];
        }
        if self.buf.len() + bytes.len() > self.max {
            return Err(LineError::TooLong);
        }
        self.buf.extend_from_slice(bytes);
        Ok(lines)
    }

    /// Bytes of an incomplete line held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DeviceId {
        DeviceId::from_sha256(&[9; 32])
    }

    #[test]
    fn hello_round_trips_and_matches_the_spec_keys() {
        let hello = Message::Hello(Hello {
            id: id(),
            name: "laptop".into(),
            device_type: DeviceType::Mobile,
            port: 4242,
        });
        let line = hello.encode();
        assert_eq!(*line.last().unwrap(), b'\n');
        let json: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(json["type"], "hello");
        assert_eq!(json["v"], 1);
        assert_eq!(json["id"], id().as_str());
        assert_eq!(json["device_type"], "mobile");
        assert_eq!(json["port"], 4242);
        assert_eq!(Message::decode(&line[..line.len() - 1]).unwrap(), hello);
    }

    #[test]
    fn candidates_use_the_browser_key_names() {
        let msg = Message::Candidate(Candidate {
            candidate: "candidate:1 1 udp 2130706431 10.77.0.2 5000 typ host".into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        });
        let json: serde_json::Value = serde_json::from_slice(&msg.encode()).unwrap();
        assert_eq!(json["sdpMid"], "0");
        assert_eq!(json["sdpMLineIndex"], 0);
        let end = br#"{"type":"candidate","candidate":""}"#;
        assert_eq!(
            Message::decode(end).unwrap(),
            Message::Candidate(Candidate {
                candidate: String::new(),
                sdp_mid: None,
                sdp_mline_index: None
            })
        );
    }

    #[test]
    fn unknown_types_and_keys_are_ignored() {
        assert_eq!(
            Message::decode(br#"{"type":"ping","x":1}"#).unwrap(),
            Message::Unknown
        );
        assert_eq!(
            Message::decode(br#"{"type":"bye","reason":"busy","extra":[1,2]}"#).unwrap(),
            Message::Bye {
                reason: "busy".into()
            }
        );
    }

    #[test]
    fn a_hello_with_another_version_is_recognised_as_such() {
        for v in ["2", "\"1\"", "1.0", "null"] {
            let line = format!(
                r#"{{"type":"hello","v":{v},"id":"{}","name":"x","device_type":"server","port":1}}"#,
                id()
            );
            assert_eq!(
                Message::decode(line.as_bytes()).unwrap(),
                Message::HelloWrongVersion,
                "{v}"
            );
        }
    }

    #[test]
    fn bad_lines_get_errors_that_close_the_connection() {
        assert_eq!(Message::decode(b"\xff\xfe"), Err(LineError::NotUtf8));
        assert!(matches!(
            Message::decode(b"{nope"),
            Err(LineError::NotJson(_))
        ));
        assert!(matches!(
            Message::decode(b"[1,2]"),
            Err(LineError::NotJson(_))
        ));
        assert!(matches!(
            Message::decode(br#"{"type":7}"#),
            Err(LineError::NotJson(_))
        ));
        assert!(matches!(
            Message::decode(br#"{"type":"offer","seq":1}"#),
            Err(LineError::Malformed { .. })
        ));
        assert!(matches!(
            Message::decode(br#"{"type":"offer","sdp":"x","seq":-1}"#),
            Err(LineError::Malformed { .. })
        ));
        assert!(matches!(
            Message::decode(br#"{"type":"hello","v":1,"id":"short","port":1}"#),
            Err(LineError::Malformed { .. })
        ));
    }

    #[test]
    fn an_overlong_name_is_clamped_not_fatal() {
        let line = format!(
            r#"{{"type":"hello","v":1,"id":"{}","name":"{}","device_type":"fridge","port":9}}"#,
            id(),
            "n".repeat(500)
        );
        let Message::Hello(hello) = Message::decode(line.as_bytes()).unwrap() else {
            panic!("not a hello");
        };
        assert_eq!(hello.name.len(), 63);
        assert_eq!(hello.device_type, DeviceType::Unknown);
    }

    #[test]
    fn framer_splits_lines_across_pushes() {
        let mut framer = LineFramer::default();
        assert!(framer.push(b"{\"a\":").unwrap().is_empty());
        let lines = framer.push(b"1}\n{\"b\":2}\n{\"c\"").unwrap();
        assert_eq!(lines, vec![b"{\"a\":1}".to_vec(), b"{\"b\":2}".to_vec()]);
        assert_eq!(framer.pending(), 4);
    }

    #[test]
    fn framer_refuses_a_line_over_the_limit_before_buffering_it() {
        let mut framer = LineFramer::default();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..4 {
            framer.push(&chunk).unwrap();
        }
        assert_eq!(framer.push(b"x"), Err(LineError::TooLong));
        // Exactly the limit is fine.
        let mut framer = LineFramer::default();
        let mut line = vec![b'x'; MAX_LINE_BYTES];
        line.push(b'\n');
        assert_eq!(framer.push(&line).unwrap().len(), 1);
    }
}

//! The JSON bodies of the LocalSend protocol (v2.1, with what v2.2 daemons send) and their
//! checks: what a peer may send fsnode is decoded here, bounded, and turned into typed facts;
//! what fsnode sends is encoded here. Pure: no IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::core::DeviceType;

/// The protocol version fsnode speaks and announces.
pub const PROTOCOL_VERSION: &str = "2.1";
/// A register/announcement/info body, at most (a UDP datagram is smaller anyway).
pub const MAX_INFO_BYTES: usize = 64 * 1024;
/// A `prepare-upload` body, at most: a few hundred bytes per file and a text message's
/// `preview` (the apps send short texts as a file's preview).
pub const MAX_PREPARE_BYTES: usize = 4 * 1024 * 1024;
/// Files in one `prepare-upload`, at most.
pub const MAX_FILES: usize = 4096;
/// An alias is kept to this many bytes (a device name in `fsnode peers`, as mDNS's `name`).
pub const MAX_ALIAS_BYTES: usize = 63;
/// Text fields (ids, types, versions, models) longer than this make the body invalid.
const MAX_FIELD_BYTES: usize = 1024;

/// Why a body was refused (answered `400`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BodyError {
    #[error("the body is {0} bytes, more than the {1} allowed")]
    TooLarge(usize, usize),
    #[error("the body is not the expected JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

/// A device's self-description (`register`, announcements, `prepare-upload`'s `info`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    pub alias: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub device_model: Option<String>,
    #[serde(default)]
    pub device_type: Option<String>,
    #[serde(default)]
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub download: Option<bool>,
    /// Announcements only: `true` asks everyone to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announce: Option<bool>,
    /// Protocol v1's name for `announce`, still sent by some.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub announcement: Option<bool>,
}

/// What fsnode takes from an `Info`: the claimed fingerprint (HTTPS mode: the SHA-256 of the
/// device's certificate, a claim until checked), how to reach it, and names for people.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub fingerprint: [u8; 32],
    pub alias: String,
    pub device_type: DeviceType,
    /// The port of its HTTPS server.
    pub port: u16,
    /// It asked to be answered (an announcement with `announce: true`).
    pub announce: bool,
}

impl Info {
    /// Checks what fsnode relies on: an HTTPS device (a 64-hex-digit fingerprint; HTTP mode's
    /// random strings cannot be checked), bounded fields, a port. The alias is cut to
    /// [`MAX_ALIAS_BYTES`] at a character boundary.
    pub fn claim(&self, default_port: u16) -> Result<Claim, BodyError> {
        for (what, field) in [
            ("version", &self.version),
            ("deviceModel", &self.device_model),
            ("deviceType", &self.device_type),
            ("protocol", &self.protocol),
        ] {
            if field.as_ref().is_some_and(|f| f.len() > MAX_FIELD_BYTES) {
                return Err(BodyError::Invalid(format!("{what} is too long")));
            }
        }
        if self.alias.len() > MAX_FIELD_BYTES {
            return Err(BodyError::Invalid("alias is too long".into()));
        }
        if self.protocol.as_deref() == Some("http") {
            return Err(BodyError::Invalid(
                "the device runs LocalSend without encryption (HTTP); fsnode takes only HTTPS devices, whose fingerprint it can check".into(),
            ));
        }
        let fingerprint = parse_sha256(&self.fingerprint).ok_or_else(|| {
            BodyError::Invalid("fingerprint is not a SHA-256 in hex (HTTPS mode)".into())
        })?;
        let port = self.port.unwrap_or(default_port);
        if port == 0 {
            return Err(BodyError::Invalid("port 0".into()));
        }
        Ok(Claim {
            fingerprint,
            alias: cut_alias(&self.alias),
            device_type: device_type_from_wire(self.device_type.as_deref()),
            port,
            announce: self.announce.or(self.announcement).unwrap_or(false),
        })
    }
}

/// LocalSend's device types in fsnode's terms (`headless` and `server` are servers; `web`
/// and unknown values are `unknown`).
pub fn device_type_from_wire(text: Option<&str>) -> DeviceType {
    match text {
        Some("mobile") => DeviceType::Mobile,
        Some("desktop") => DeviceType::Desktop,
        Some("headless" | "server") => DeviceType::Server,
        _ => DeviceType::Unknown,
    }
}

fn cut_alias(alias: &str) -> String {
    let mut end = alias.len().min(MAX_ALIAS_BYTES);
    while !alias.is_char_boundary(end) {
        end -= 1;
    }
    alias[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// A SHA-256 in hex (either case), as LocalSend writes fingerprints and file hashes.
pub fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    hex::decode_to_slice(text, &mut digest).ok()?;
    Some(digest)
}

/// The fingerprint as fsnode sends it: upper-case hex, as the LocalSend app writes it.
pub fn fingerprint_text(digest: &[u8; 32]) -> String {
    hex::encode_upper(digest)
}

/// One file of a `prepare-upload`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FileEntry {
    pub id: String,
    pub file_name: String,
    pub size: u64,
    #[serde(default)]
    pub file_type: Option<String>,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accessed: Option<String>,
}

/// The `prepare-upload` request body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrepareUpload {
    pub info: Info,
    pub files: BTreeMap<String, FileEntry>,
}

/// One offered file as fsnode takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offered {
    /// The sender's id for it (the key of `files`).
    pub file_id: String,
    pub name: String,
    pub size: u64,
    pub mime: String,
    pub sha256: Option<[u8; 32]>,
    /// `metadata.modified`, unix seconds.
    pub mtime: Option<i64>,
}

/// The `prepare-upload` response body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PrepareResponse {
    pub session_id: String,
    pub files: BTreeMap<String, String>,
}

/// Decodes a register body, an announcement or an info answer.
pub fn decode_info(body: &[u8]) -> Result<Info, BodyError> {
    if body.len() > MAX_INFO_BYTES {
        return Err(BodyError::TooLarge(body.len(), MAX_INFO_BYTES));
    }
    serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))
}

/// Decodes and checks a `prepare-upload` body: the sender's info and the offered files (at
/// most [`MAX_FILES`], each with a bounded id and type, a SHA-256 in hex or none).
pub fn decode_prepare(body: &[u8]) -> Result<(Info, Vec<Offered>), BodyError> {
    if body.len() > MAX_PREPARE_BYTES {
        return Err(BodyError::TooLarge(body.len(), MAX_PREPARE_BYTES));
    }
    let prepare: PrepareUpload =
        serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))?;
    if prepare.files.len() > MAX_FILES {
        return Err(BodyError::Invalid(format!(
            "{} files in one session, at most {MAX_FILES}",
            prepare.files.len()
        )));
    }
    let mut files = Vec::with_capacity(prepare.files.len());
    for (key, entry) in prepare.files {
        if key.len() > MAX_FIELD_BYTES
            || entry
                .file_type
                .as_ref()
                .is_some_and(|t| t.len() > MAX_FIELD_BYTES)
        {
            return Err(BodyError::Invalid("a file id or type is too long".into()));
        }
        let sha256 = match entry.sha256.as_deref() {
            None | Some("") => None,
            Some(text) => Some(parse_sha256(text).ok_or_else(|| {
                BodyError::Invalid(format!("the sha256 of {key:?} is not 64 hex digits"))
            })?),
        };
        let mtime = entry
            .metadata
            .as_ref()
            .and_then(|m| m.modified.as_deref())
            .and_then(parse_time);
        files.push(Offered {
            file_id: key,
            name: entry.file_name,
            size: entry.size,
            mime: entry
                .file_type
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| "application/octet-stream".into()),
            sha256,
            mtime,
        });
    }
    Ok((prepare.info, files))
}

/// Decodes a `prepare-upload` answer (fsnode sending).
pub fn decode_prepare_response(body: &[u8]) -> Result<PrepareResponse, BodyError> {
    if body.len() > MAX_PREPARE_BYTES {
        return Err(BodyError::TooLarge(body.len(), MAX_PREPARE_BYTES));
    }
    serde_json::from_slice(body).map_err(|e| BodyError::Json(e.to_string()))
}

/// An RFC 3339 time (`2021-01-01T12:34:56Z`) in unix seconds.
pub fn parse_time(text: &str) -> Option<i64> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    Some(parsed.unix_timestamp())
}

/// Unix seconds as RFC 3339 (UTC).
pub fn format_time(seconds: i64) -> Option<String> {
    let at = time::OffsetDateTime::from_unix_timestamp(seconds).ok()?;
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: &str = "0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF";

    fn prepare(files: &str) -> String {
        format!(
            r#"{{"info":{{"alias":"Nice Orange","version":"2.1","deviceModel":"Samsung","deviceType":"mobile","fingerprint":"{FP}","port":53317,"protocol":"https","download":false}},"files":{files}}}"#
        )
    }

    #[test]
    fn a_prepare_upload_of_the_spec_decodes() {
        let body = prepare(
            r#"{"a":{"id":"a","fileName":"my image.png","size":324242,"fileType":"image/jpeg","sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","preview":null,"metadata":{"modified":"2021-01-01T12:34:56Z"}},"b":{"id":"b","fileName":"dir/x.txt","size":0,"fileType":"text/plain"}}"#,
        );
        let (info, files) = decode_prepare(body.as_bytes()).unwrap();
        let claim = info.claim(53317).unwrap();
        assert_eq!(fingerprint_text(&claim.fingerprint), FP);
        assert_eq!(claim.device_type, DeviceType::Mobile);
        assert_eq!(claim.alias, "Nice Orange");
        assert_eq!(files.len(), 2);
        assert_eq!(files[0].name, "my image.png");
        assert_eq!(files[0].mtime, Some(1_609_504_496));
        assert!(files[0].sha256.is_some());
        assert_eq!(files[1].sha256, None);
        assert_eq!(files[1].mime, "text/plain");
    }

    #[test]
    fn bad_bodies_get_an_error_not_a_panic() {
        assert!(matches!(decode_prepare(b"{"), Err(BodyError::Json(_))));
        let bad_hash = prepare(r#"{"a":{"id":"a","fileName":"x","size":1,"sha256":"zz"}}"#);
        assert!(matches!(
            decode_prepare(bad_hash.as_bytes()),
            Err(BodyError::Invalid(_))
        ));
        let negative = prepare(r#"{"a":{"id":"a","fileName":"x","size":-1}}"#);
        assert!(decode_prepare(negative.as_bytes()).is_err());
        let huge = vec![b' '; MAX_PREPARE_BYTES + 1];
        assert!(matches!(
            decode_prepare(&huge),
            Err(BodyError::TooLarge(..))
        ));
        let many: Vec<String> = (0..=MAX_FILES)
            .map(|n| format!(r#""{n}":{{"id":"{n}","fileName":"f{n}","size":1}}"#))
            .collect();
        let too_many = prepare(&format!("{{{}}}", many.join(",")));
        assert!(matches!(
            decode_prepare(too_many.as_bytes()),
            Err(BodyError::Invalid(_))
        ));
    }

    #[test]
    fn only_https_devices_with_a_real_fingerprint_make_a_claim() {
        let mut info = decode_info(
            format!(r#"{{"alias":"a","fingerprint":"{FP}","announce":true}}"#).as_bytes(),
        )
        .unwrap();
        let claim = info.claim(53317).unwrap();
        assert!(claim.announce);
        assert_eq!(claim.port, 53317);
        info.protocol = Some("http".into());
        assert!(info.claim(53317).is_err());
        info.protocol = Some("https".into());
        info.fingerprint = "random string".into();
        assert!(info.claim(53317).is_err());
        info.fingerprint = FP.into();
        info.alias = "é".repeat(40);
        let cut = info.claim(1).unwrap().alias;
        assert!(cut.len() <= MAX_ALIAS_BYTES && cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn times_round_trip() {
        let text = format_time(1_609_504_496).unwrap();
        assert_eq!(parse_time(&text), Some(1_609_504_496));
        assert_eq!(parse_time("yesterday"), None);
    }
}

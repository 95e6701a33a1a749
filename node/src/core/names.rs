//! File names on the receiving side (spec section 4, "Names", "Receiver storage" and
//! "Completion"): which names a sender may use, the `.part` file's name, the non-overwriting
//! `name (1).ext` variants and the permission bits a finished file gets. Pure: no file system.

use crate::core::TransferId;

/// The longest file name component most file systems (and Linux's `NAME_MAX`) accept.
pub const NAME_MAX: usize = 255;
/// The longest name a sender may use (Linux's `PATH_MAX`).
pub const PATH_MAX: usize = 4096;

/// Why a name was refused; the message is the `reject` reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("the name is empty")]
    Empty,
    #[error("the name is an absolute path")]
    Absolute,
    #[error("the name has an empty component")]
    EmptyComponent,
    #[error("the name has a \".\" component")]
    Dot,
    #[error("the name has a \"..\" component")]
    DotDot,
    #[error("the name contains a NUL character")]
    Nul,
    #[error("the name contains a backslash")]
    Backslash,
    #[error("a name component has {0} bytes, more than {NAME_MAX}")]
    ComponentTooLong(usize),
    #[error("the name has {0} bytes, more than {PATH_MAX}")]
    TooLong(usize),
}

/// Checks a sender's name against the rules of spec section 4 and returns its components (the
/// directories, then the file name; never empty).
pub fn check_name(name: &str) -> Result<Vec<String>, NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > PATH_MAX {
        return Err(NameError::TooLong(name.len()));
    }
    if name.contains('\0') {
        return Err(NameError::Nul);
    }
    if name.contains('\\') {
        return Err(NameError::Backslash);
    }
    if name.starts_with('/') {
        return Err(NameError::Absolute);
    }
    name.split('/')
        .map(|component| match component {
            "" => Err(NameError::EmptyComponent),
            "." => Err(NameError::Dot),
            ".." => Err(NameError::DotDot),
            c if c.len() > NAME_MAX => Err(NameError::ComponentTooLong(c.len())),
            c => Ok(c.to_owned()),
        })
        .collect()
}

/// The `.part` file of a transfer: `<name>.<first 8 hex digits of id>.part`, the name shortened
/// (on a character boundary) so the whole fits in [`NAME_MAX`] bytes.
pub fn part_name(file_name: &str, id: &TransferId) -> String {
    let suffix = format!(".{}.part", id.short());
    let stem = truncate(file_name, NAME_MAX - suffix.len());
    format!("{stem}{suffix}")
}

/// The `n`th non-overwriting variant of a file name: `name (n).ext` with the counter before the
/// last extension, `name (n)` without one, `.bashrc (n)` for a dotfile (a leading dot does not
/// start an extension). The stem is shortened (on a character boundary) so the whole fits in
/// [`NAME_MAX`] bytes; if even that cannot make room, the extension is dropped as well.
pub fn numbered(file_name: &str, n: u32) -> String {
    let counter = format!(" ({n})");
    let (stem, extension) = split_extension(file_name);
    if let Some(room) = NAME_MAX.checked_sub(counter.len() + extension.len()) {
        let stem = truncate(stem, room);
        if !stem.is_empty() {
            return format!("{stem}{counter}{extension}");
        }
    }
    format!("{}{counter}", truncate(file_name, NAME_MAX - counter.len()))
}

/// The permission bits of a finished file under the default policy: the sender's owner, group
/// and other read/write/execute bits (never setuid, setgid or sticky), less the receiver's umask;
/// `0o666` less the umask when the sender gave no mode.
pub fn mode_for(sender_mode: Option<u32>, umask: u32) -> u32 {
    sender_mode.map_or(0o666, |mode| mode & 0o777) & !umask & 0o777
}

/// Splits off the last extension, dot included: `("a.tar", ".gz")`. A leading dot (a dotfile)
/// and a trailing dot do not make an extension.
fn split_extension(file_name: &str) -> (&str, &str) {
    match file_name.rfind('.') {
        Some(dot) if dot > 0 && dot + 1 < file_name.len() => file_name.split_at(dot),
        _ => (file_name, ""),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    &text[..text.floor_char_boundary(max)]
}

#[cfg(test)]
mod tests {
    use std::path::{Component, Path, PathBuf};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn accepts_relative_paths_and_returns_components() {
        assert_eq!(check_name("a.txt").unwrap(), ["a.txt"]);
        assert_eq!(
            check_name("dir/sub/a b.txt").unwrap(),
            ["dir", "sub", "a b.txt"]
        );
        assert_eq!(check_name("...").unwrap(), ["..."]);
        assert_eq!(check_name(".bashrc").unwrap(), [".bashrc"]);
        assert_eq!(check_name("..a/b..").unwrap(), ["..a", "b.."]);
    }

    #[test]
    fn refuses_each_rule() {
        assert_eq!(check_name(""), Err(NameError::Empty));
        assert_eq!(check_name("/etc/passwd"), Err(NameError::Absolute));
        assert_eq!(check_name("/"), Err(NameError::Absolute));
        assert_eq!(check_name("a//b"), Err(NameError::EmptyComponent));
        assert_eq!(check_name("a/"), Err(NameError::EmptyComponent));
        assert_eq!(check_name("."), Err(NameError::Dot));
        assert_eq!(check_name("a/./b"), Err(NameError::Dot));
        assert_eq!(check_name(".."), Err(NameError::DotDot));
        assert_eq!(check_name("a/../../b"), Err(NameError::DotDot));
        assert_eq!(check_name("a\0b"), Err(NameError::Nul));
        assert_eq!(check_name("..\\..\\x"), Err(NameError::Backslash));
        assert_eq!(check_name("a\\b"), Err(NameError::Backslash));
    }

    #[test]
    fn limits_component_and_total_length_in_bytes() {
        assert!(check_name(&"a".repeat(255)).is_ok());
        assert_eq!(
            check_name(&"a".repeat(256)),
            Err(NameError::ComponentTooLong(256))
        );
        // 128 two-byte characters: 128 characters but 256 bytes.
        assert_eq!(
            check_name(&format!("d/{}", "é".repeat(128))),
            Err(NameError::ComponentTooLong(256))
        );
        let deep = vec!["a".repeat(255); 16].join("/"); // 16 × 256 − 1 = 4095 bytes
        assert!(check_name(&deep).is_ok());
        assert!(check_name(&format!("{deep}b")).is_err());
        let long = format!("{deep}/b");
        assert_eq!(check_name(&long), Err(NameError::TooLong(4097)));
    }

    #[test]
    fn errors_read_as_reasons() {
        assert_eq!(
            NameError::DotDot.to_string(),
            "the name has a \"..\" component"
        );
        assert_eq!(
            NameError::ComponentTooLong(300).to_string(),
            "a name component has 300 bytes, more than 255"
        );
    }

    #[test]
    fn part_name_tags_the_name_with_the_id() {
        let id = TransferId([0x1f, 0x2e, 0x3d, 0x4c, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9]);
        assert_eq!(part_name("photo.jpg", &id), "photo.jpg.1f2e3d4c.part");
        let long = part_name(&"x".repeat(255), &id);
        assert_eq!(long.len(), 255);
        assert!(long.ends_with("xxx.1f2e3d4c.part"));
        // Shortened on a character boundary: 120 three-byte characters is 360 bytes.
        let wide = part_name(&"€".repeat(120), &id);
        assert!(wide.len() <= 255);
        assert_eq!(wide, format!("{}.1f2e3d4c.part", "€".repeat(80)));
    }

    #[test]
    fn numbered_puts_the_counter_before_the_last_extension() {
        assert_eq!(numbered("report.pdf", 1), "report (1).pdf");
        assert_eq!(numbered("archive.tar.gz", 2), "archive.tar (2).gz");
        assert_eq!(numbered("README", 1), "README (1)");
        assert_eq!(numbered(".bashrc", 1), ".bashrc (1)");
        assert_eq!(numbered(".config.json", 3), ".config (3).json");
        assert_eq!(numbered("trailing.", 1), "trailing. (1)");
        assert_eq!(numbered("a", 10), "a (10)");
    }

    #[test]
    fn numbered_stays_within_name_max() {
        let name = format!("{}.ext", "s".repeat(251));
        let out = numbered(&name, 1);
        assert_eq!(out.len(), 255);
        assert!(out.ends_with("s (1).ext"));
        let wide = numbered(&format!("{}.txt", "€".repeat(83)), 12); // 253 bytes
        assert!(wide.len() <= 255);
        assert!(wide.ends_with("€ (12).txt"));
        // An extension too long to keep: the whole name is shortened instead.
        let huge_ext = format!("a.{}", "e".repeat(253));
        let out = numbered(&huge_ext, 7);
        assert_eq!(out.len(), 255);
        assert!(out.starts_with("a.eee") && out.ends_with("e (7)"));
        assert_eq!(numbered(&"d".repeat(255), u32::MAX).len(), 255);
    }

    #[test]
    fn mode_keeps_permission_bits_and_applies_the_umask() {
        assert_eq!(mode_for(Some(0o755), 0o022), 0o755);
        assert_eq!(mode_for(Some(0o777), 0o022), 0o755);
        assert_eq!(mode_for(Some(0o640), 0o077), 0o600);
        assert_eq!(mode_for(Some(0o4755), 0o022), 0o755, "no setuid");
        assert_eq!(mode_for(Some(0o2755), 0), 0o755, "no setgid");
        assert_eq!(mode_for(Some(0o1777), 0), 0o777, "no sticky bit");
        assert_eq!(
            mode_for(Some(0o100644), 0o022),
            0o644,
            "file type bits dropped"
        );
        assert_eq!(mode_for(None, 0o022), 0o644);
        assert_eq!(mode_for(None, 0o002), 0o664);
        assert_eq!(mode_for(None, 0), 0o666);
    }

    /// Resolves `..` and `.` without touching the file system.
    fn normalise(path: &Path) -> PathBuf {
        let mut out = PathBuf::new();
        for component in path.components() {
            match component {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }

    fn names() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[a./\\\\\0]{0,12}",
            proptest::collection::vec(prop_oneof!["a", "\\.", "\\.\\.", "", "ä", "\\.a"], 1..6)
                .prop_map(|parts| parts.join("/")),
        ]
    }

    proptest! {
        #[test]
        fn accepted_names_stay_under_the_directory(name in names()) {
            let root = Path::new("/srv/receive");
            if let Ok(components) = check_name(&name) {
                prop_assert!(!components.is_empty());
                let mut joined = root.to_path_buf();
                for component in &components {
                    prop_assert!(!component.is_empty() && !component.contains('/'));
                    joined.push(component);
                }
                prop_assert_eq!(&joined, &root.join(&name));
                let resolved = normalise(&joined);
                prop_assert!(resolved.starts_with(root) && resolved != root, "{:?}", resolved);
                prop_assert!(Path::new(&name).components().all(|c| matches!(c, Component::Normal(_))));
            }
        }

        #[test]
        fn derived_names_fit(name in "\\PC{1,300}", n in any::<u32>()) {
            let id = TransferId([0xab; 16]);
            prop_assert!(part_name(&name, &id).len() <= NAME_MAX);
            let variant = numbered(&name, n);
            prop_assert!(variant.len() <= NAME_MAX);
            let counter = format!(" ({n})");
            prop_assert!(variant.contains(&counter));
        }
    }
}

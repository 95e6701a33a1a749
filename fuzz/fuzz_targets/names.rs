//! Receive-name sanitising (spec 4, "Names"): `check_name`, `part_name`, `numbered`.
//!
//! Whatever a sender names a file, an accepted name must be a plain relative path that stays
//! under the receive directory, and the derived `.part` and `name (n)` file names must be single
//! components that fit in NAME_MAX.
#![no_main]

use std::path::{Component, Path, PathBuf};

use arbitrary::Arbitrary;
use fsnode::core::TransferId;
use fsnode::core::names::{NAME_MAX, PATH_MAX, check_name, numbered, part_name};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    id: [u8; 16],
    n: u32,
    name: &'a str,
}

/// Resolves `..` and `.` lexically, without touching the file system.
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

/// A derived file name must be one safe path component.
fn assert_single_component(name: &str) {
    assert!(!name.is_empty());
    assert!(name.len() <= NAME_MAX, "{} bytes", name.len());
    assert!(!name.contains('/') && !name.contains('\\') && !name.contains('\0'));
    assert!(name != "." && name != "..");
}

fuzz_target!(|input: Input<'_>| {
    let name = input.name;
    let base = Path::new("/srv/receive");
    if let Ok(components) = check_name(name) {
        assert!(!components.is_empty());
        assert!(name.len() <= PATH_MAX);
        assert!(!name.contains('\0') && !name.contains('\\'));
        let mut joined = base.to_path_buf();
        for component in &components {
            assert!(!component.is_empty());
            assert!(component.len() <= NAME_MAX);
            assert!(!component.contains('/') && !component.contains('\\'));
            assert!(!component.contains('\0'));
            assert!(component != "." && component != "..");
            joined.push(component);
        }
        assert_eq!(components.join("/"), name);
        assert_eq!(joined, base.join(name));
        assert!(Path::new(name).is_relative());
        assert!(
            Path::new(name)
                .components()
                .all(|c| matches!(c, Component::Normal(_)))
        );
        let resolved = normalise(&joined);
        assert!(
            resolved.starts_with(base) && resolved != base,
            "{resolved:?}"
        );

        // The names the receiver derives from the accepted file name.
        let file_name = components.last().expect("not empty");
        let part = part_name(file_name, &TransferId(input.id));
        assert_single_component(&part);
        assert!(part.ends_with(".part"));
        let variant = numbered(file_name, input.n);
        assert_single_component(&variant);
        assert!(variant.contains(&format!(" ({})", input.n)));
        assert!(normalise(&base.join(&part)).starts_with(base));
        assert!(normalise(&base.join(&variant)).starts_with(base));
    }
    // The derivations never panic on anything, accepted or not, and stay within NAME_MAX.
    assert!(part_name(name, &TransferId(input.id)).len() <= NAME_MAX);
    assert!(numbered(name, input.n).len() <= NAME_MAX);
});

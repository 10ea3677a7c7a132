//! The temporary name a file is written under before its atomic rename
//! (io::write_atomic, the picture writer). A leaf: it imports nothing of
//! the crate, so every layer may use it.

use std::ffi::{OsStr, OsString};

/// The longest file name most file systems take (ext4, XFS, APFS, NTFS).
pub const NAME_MAX: usize = 255;

/// `.NAME.tmp.TAG` beside the target `name`, or, where that would pass the
/// file-system limit, `.tmp.HASH.TAG` keyed by a hash of `name`: a target
/// name that fits never fails for its temporary's length. `tag` keeps
/// writers apart (a process id, a counter).
pub fn temp_name(name: &OsStr, tag: &str) -> OsString {
    let mut long = OsString::from(".");
    long.push(name);
    long.push(format!(".tmp.{tag}"));
    if long.len() <= NAME_MAX {
        long
    } else {
        let hash = crc32fast::hash(name.as_encoded_bytes());
        OsString::from(format!(".tmp.{hash:08x}.{tag}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_names_get_a_short_temporary() {
        assert_eq!(temp_name(OsStr::new("a.json"), "7"), ".a.json.tmp.7");
        let long = "x".repeat(252);
        let t = temp_name(OsStr::new(&long), "4000000.3");
        assert!(t.len() <= NAME_MAX && t.to_string_lossy().starts_with(".tmp."), "{t:?}");
        assert_ne!(t, temp_name(OsStr::new(&"y".repeat(252)), "4000000.3"));
    }
}

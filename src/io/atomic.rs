use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tempname::temp_name;

/// Writes `bytes` to `path` through a temporary file in the same folder and
/// a rename, so a crash never leaves a half-written file under the real name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let name = path.file_name().ok_or_else(|| Error::format(path, "not a file name"))?;
    let tmp = dir.join(temp_name(name, &std::process::id().to_string()));
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        Ok(())
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_target_name_gets_a_short_temporary() {
        // 252 bytes with the extension: fits, while `.NAME.tmp.PID` would not.
        let long = "x".repeat(247);
        let dir = std::env::temp_dir().join(format!("nemesis-atomic-{}", std::process::id()));
        let path = dir.join(format!("{long}.json"));
        write_atomic(&path, b"{}").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{}");
        // A name past the limit fails with the system's own reason.
        let e = write_atomic(&dir.join("y".repeat(300)), b"").unwrap_err().to_string();
        assert!(e.contains("too long"), "{e}");
        fs::remove_dir_all(&dir).unwrap();
    }
}

//! Output folders: claimed atomically (`claim_folder`), and one writer per
//! folder: an advisory lock (`flock`) on `FOLDER/.lock`,
//! held for as long as the [`FolderLock`] lives. The kernel drops it when
//! the process ends however it ends, so a lock left by a killed run never
//! blocks the next one; the file itself stays and says who held it last.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file's name inside the folder it guards.
pub const LOCK_FILE: &str = ".lock";

/// A held lock on a folder; released on drop (or by the process's end).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    pub path: PathBuf,
}

impl FolderLock {
    /// Takes the lock on `dir` (which must exist) without waiting, and
    /// writes this process's id, start time and command into the lock file.
    /// A folder another process holds is refused with that process's id and
    /// start time, as `what` (the flag that named the folder).
    pub fn acquire(dir: &Path, what: &'static str) -> Result<FolderLock> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if !try_lock(&file).map_err(|e| Error::io(&path, e))? {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.lines().take(2).collect::<Vec<_>>().join(", ");
            return Err(Error::invalid(
                what,
                format!(
                    "{} is in use by another nemesis process ({}); wait for it to finish or stop it",
                    dir.display(),
                    if holder.is_empty() {
                        "it has not said who it is yet".into()
                    } else {
                        holder
                    }
                ),
            ));
        }
        let command: Vec<String> = std::env::args().collect();
        let note = format!(
            "pid {}\nstarted {}\n{}\n",
            std::process::id(),
            utc_now(),
            command.join(" ")
        );
        let write = |f: &mut File| -> std::io::Result<()> {
            f.set_len(0)?;
            f.rewind()?;
            f.write_all(note.as_bytes())?;
            f.flush()
        };
        write(&mut file).map_err(|e| Error::io(&path, e))?;
        Ok(FolderLock { _file: file, path })
    }
}

/// Claims an output folder: `out`, or the next free `runs/KIND-N` (made
/// with `create_dir`, so two commands started together never pick the same
/// one). Says whether this process made it, so a command that fails before
/// writing anything can take it away again.
pub fn claim_folder(out: Option<&Path>, kind: &str) -> Result<(PathBuf, bool)> {
    let make = |p: &Path| -> Result<bool> {
        if let Some(parent) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        match std::fs::create_dir(p) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => Ok(false),
            Err(e) => Err(Error::io(p, e)),
        }
    };
    if let Some(p) = out {
        let created = make(p)?;
        return Ok((p.to_path_buf(), created));
    }
    let mut n = 1u64;
    loop {
        let p = PathBuf::from(format!("runs/{kind}-{n}"));
        if !p.exists() && make(&p)? {
            return Ok((p, true));
        }
        n += 1;
    }
}

#[cfg(unix)]
fn try_lock(f: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor this File owns; no memory is shared.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

#[cfg(not(unix))]
fn try_lock(_f: &File) -> std::io::Result<bool> {
    Ok(true)
}

/// Now as `2026-12-07 14:03:51 UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    utc(secs)
}

/// Seconds since 1970 as a UTC date and time (the proleptic Gregorian
/// calendar, from the day count by eras of 400 years).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_in_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_601_600 + 3_661), "2026-12-07 01:01:01 UTC");
    }

    #[test]
    fn a_second_holder_is_refused_and_the_lock_frees_on_drop() {
        let dir = std::env::temp_dir().join(format!("nemesis-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let first = FolderLock::acquire(&dir, "--out").unwrap();
        // flock locks belong to the open file: a second open in the same
        // process conflicts like another process would.
        let e = FolderLock::acquire(&dir, "--out").unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        let again = FolderLock::acquire(&dir, "--out").unwrap();
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

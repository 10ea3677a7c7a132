//! What the host machine offers: the memory a new allocation may still take.
//!
//! Read from Linux's `/proc/meminfo` (`MemAvailable`) and lowered by the
//! cgroup's limit when the process runs in one (containers, SLURM jobs), and
//! by `NEMESIS_MEMORY_LIMIT` (bytes, or with a K/M/G/T suffix) when set.
//! Elsewhere the host does not say, and nothing is refused on its account.

use std::path::Path;

use crate::error::{Error, Result, WontFit};

/// The environment variable that caps the memory a command plans with.
pub const MEMORY_LIMIT_ENV: &str = "NEMESIS_MEMORY_LIMIT";

/// Bytes the host could still give this process, when it says.
pub fn available_memory() -> Option<u64> {
    let limit = std::env::var(MEMORY_LIMIT_ENV).ok().and_then(|v| parse_bytes(&v));
    let sources = [meminfo_available(), cgroup_available(), limit];
    sources.into_iter().flatten().min()
}

/// `1234`, `512K`, `1.5G`, `2GiB` (powers of 1024).
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim().trim_end_matches(['B', 'b']).trim_end_matches(['i', 'I']);
    let (num, scale) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 1u64 << 10),
        'm' | 'M' => (&t[..t.len() - 1], 1 << 20),
        'g' | 'G' => (&t[..t.len() - 1], 1 << 30),
        't' | 'T' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some((v * scale as f64) as u64)
}

fn meminfo_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The room left under the cgroup's memory limit (v2, then v1).
fn cgroup_available() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    // v2: one line "0::/path".
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        let dir = Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'));
        if let Some(room) = room(&dir.join("memory.max"), &dir.join("memory.current")) {
            return Some(room);
        }
    }
    room(
        Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
        Path::new("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
}

fn room(limit: &Path, used: &Path) -> Option<u64> {
    let read = |p: &Path| std::fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    // "max" (no limit) does not parse: no cap from here. v1 writes a huge
    // number instead, which loses to MemAvailable.
    let limit = read(limit)?;
    Some(limit.saturating_sub(read(used).unwrap_or(0)))
}

/// `1.5 GiB`, `340 MiB`, `12 KiB`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else if v >= 100.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `n` copies of `value`, refused with a clear error (never an abort in
/// the allocator) when the bytes exceed what the host has available or
/// the allocation fails. For the large buffers sized by user input: tiles
/// of a volume, decoded images.
pub fn filled_vec<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let refuse = |needs: String| {
        Error::WontFit(Box::new(WontFit {
            place: "host".into(),
            what: what.to_string(),
            needs,
            breakdown: format!("{n} values"),
            available: available_memory().map(human_bytes).unwrap_or_else(|| "less".into()),
            hint: "use a smaller input or a machine with more memory".into(),
        }))
    };
    let Some(bytes) = n.checked_mul(std::mem::size_of::<T>()) else {
        return Err(refuse("more bytes than can be counted".into()));
    };
    if available_memory().is_some_and(|a| bytes as u64 > a) {
        return Err(refuse(human_bytes(bytes as u64)));
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| refuse(human_bytes(bytes as u64)))?;
    v.resize(n, value);
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_parse_with_and_without_units() {
        assert_eq!(parse_bytes("1234"), Some(1234));
        assert_eq!(parse_bytes("512K"), Some(512 << 10));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes("2GiB"), Some(2 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
    }

    #[test]
    fn a_buffer_beyond_the_host_is_refused_not_aborted() {
        let e = filled_vec(usize::MAX / 2, 0u32, "a test buffer").unwrap_err();
        assert!(e.to_string().contains("a test buffer"), "{e}");
        assert_eq!(filled_vec(3, 7u8, "three bytes").unwrap(), vec![7, 7, 7]);
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn linux_reports_available_memory() {
        if cfg!(target_os = "linux") {
            let m = available_memory().expect("MemAvailable on Linux");
            assert!(m > 0);
        }
    }
}

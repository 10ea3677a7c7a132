//! NCCL between the GPUs of a data-parallel run (docs/DESIGN.md, "Data-parallel
//! training"). The library is loaded at run time, as the rest of CUDA is,
//! but by this module rather than cudarc's NCCL loader: that one looks for
//! `libnccl.so` and `libnccl.so.<CUDA major>` only and panics when neither
//! is there, while NCCL installs itself (Debian's libnccl2, NVIDIA's
//! `nvidia-nccl-cu*` wheels) as `libnccl.so.2`. The types and constants
//! come from cudarc's NCCL bindings (`cudarc::nccl::sys`); the handful of
//! entry points used are looked up here, so a missing library or symbol is
//! an error that says what to install.
//!
//! Where the library is looked for, first found wins: `NEMESIS_NCCL` (a
//! path), then `libnccl.so.2` and `libnccl.so` on the loader's path
//! (`LD_LIBRARY_PATH`, the system's libraries).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cudarc::nccl::sys::{ncclComm_t, ncclDataType_t, ncclRedOp_t, ncclUniqueId};
use libloading::Library;

use crate::device::Reduce;
use crate::error::{Error, Result};

/// The size of NCCL's unique id, which rank 0 makes and every rank passes
/// to `Comm::init`.
pub const UNIQUE_ID_BYTES: usize = 128;

const SUCCESS: c_int = 0;
const IN_PROGRESS: c_int = 7;

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut ncclUniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut ncclComm_t, c_int, ncclUniqueId, c_int) -> c_int;
type AllReduce = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    ncclDataType_t,
    ncclRedOp_t,
    ncclComm_t,
    cudarc::driver::sys::CUstream,
) -> c_int;
type Group = unsafe extern "C" fn() -> c_int;
type CommGetAsyncError = unsafe extern "C" fn(ncclComm_t, *mut c_int) -> c_int;
type CommFinish = unsafe extern "C" fn(ncclComm_t) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;

/// The entry points used, looked up once.
struct Api {
    _lib: Library,
    path: String,
    version: c_int,
    get_unique_id: GetUniqueId,
    comm_init_rank: CommInitRank,
    all_reduce: AllReduce,
    group_start: Group,
    group_end: Group,
    comm_get_async_error: CommGetAsyncError,
    comm_abort: CommFinish,
    comm_destroy: CommFinish,
    get_error_string: GetErrorString,
}

// SAFETY: the library stays loaded while `Api` lives (for the process: it is
// kept in a static); function pointers may be called from any thread.
unsafe impl Send for Api {}
unsafe impl Sync for Api {}

/// Where NCCL is looked for, in order.
fn candidates() -> Vec<String> {
    let mut c = Vec::new();
    if let Some(p) = std::env::var_os("NEMESIS_NCCL") {
        c.push(p.to_string_lossy().into_owned());
    }
    c.push("libnccl.so.2".into());
    c.push("libnccl.so".into());
    c
}

fn load(names: Vec<String>) -> std::result::Result<Api, String> {
    let mut tried = Vec::new();
    for name in names {
        // SAFETY: loading NCCL runs its initialisers, which only set up
        // the library's own state.
        match unsafe { Library::new(&name) } {
            Ok(lib) => return bind(lib, name),
            Err(e) => tried.push(format!("{name} ({e})")),
        }
    }
    Err(format!(
        "NCCL could not be loaded (tried {}); GPU ranks need it: install NCCL 2 (Debian/Ubuntu: libnccl2 \
         from NVIDIA's CUDA repository; or `pip install nvidia-nccl-cu13` and set NEMESIS_NCCL to its \
         lib/libnccl.so.2)",
        tried.join("; ")
    ))
}

fn bind(lib: Library, path: String) -> std::result::Result<Api, String> {
    fn sym<T: Copy>(lib: &Library, path: &str, name: &str) -> std::result::Result<T, String> {
        // SAFETY: the type given for each name is NCCL's declared signature
        // (nccl.h, as cudarc's bindings declare it).
        unsafe { lib.get::<T>(name.as_bytes()) }
            .map(|s| *s)
            .map_err(|e| format!("{path} lacks {name} ({e}); NCCL 2.12 or newer is needed"))
    }
    let get_version: GetVersion = sym(&lib, &path, "ncclGetVersion")?;
    let mut version = 0;
    // SAFETY: writes one int.
    unsafe { get_version(&mut version) };
    Ok(Api {
        version,
        get_unique_id: sym(&lib, &path, "ncclGetUniqueId")?,
        comm_init_rank: sym(&lib, &path, "ncclCommInitRank")?,
        all_reduce: sym(&lib, &path, "ncclAllReduce")?,
        group_start: sym(&lib, &path, "ncclGroupStart")?,
        group_end: sym(&lib, &path, "ncclGroupEnd")?,
        comm_get_async_error: sym(&lib, &path, "ncclCommGetAsyncError")?,
        comm_abort: sym(&lib, &path, "ncclCommAbort")?,
        comm_destroy: sym(&lib, &path, "ncclCommDestroy")?,
        get_error_string: sym(&lib, &path, "ncclGetErrorString")?,
        path,
        _lib: lib,
    })
}

fn api() -> Result<&'static Api> {
    static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();
    API.get_or_init(|| load(candidates()))
        .as_ref()
        .map_err(|e| Error::invalid("nccl", e.clone()))
}

/// Which NCCL was loaded, for the run's first lines ("NCCL 2.27.3 from …").
pub fn describe() -> Result<String> {
    let a = api()?;
    let v = a.version;
    Ok(format!(
        "NCCL {}.{}.{} from {}",
        v / 10000,
        v / 100 % 100,
        v % 100,
        a.path
    ))
}

fn check(a: &Api, what: &str, r: c_int) -> Result<()> {
    if r == SUCCESS {
        return Ok(());
    }
    // SAFETY: NCCL returns a static string for any result code.
    let s = unsafe { CStr::from_ptr((a.get_error_string)(r)) }.to_string_lossy();
    Err(Error::device("nccl", what, format!("{s} (code {r})")))
}

/// A fresh NCCL unique id: rank 0 makes it, the others receive it.
pub fn unique_id() -> Result<[u8; UNIQUE_ID_BYTES]> {
    let a = api()?;
    let mut id = ncclUniqueId { internal: [0; 128] };
    // SAFETY: writes the 128-byte id.
    check(a, "making the unique id", unsafe { (a.get_unique_id)(&mut id) })?;
    Ok(id.internal.map(|c| c as u8))
}

/// One rank's membership of the ranks' NCCL communicator, on its device.
pub struct Comm {
    comm: ncclComm_t,
    pub rank: usize,
    pub size: usize,
    /// Aborted after a timeout or an error: no further collective runs.
    broken: bool,
}

// SAFETY: the communicator is used by the device that owns it, behind its
// lock, one call at a time.
unsafe impl Send for Comm {}

impl Comm {
    /// Joins the communicator every rank makes with the same `id`; blocks
    /// until all `size` ranks have joined. The device's context must be
    /// the calling thread's.
    pub fn init(id: &[u8; UNIQUE_ID_BYTES], rank: usize, size: usize) -> Result<Comm> {
        let a = api()?;
        let mut uid = ncclUniqueId { internal: [0; 128] };
        for (d, s) in uid.internal.iter_mut().zip(id) {
            *d = *s as c_char;
        }
        let mut comm: ncclComm_t = std::ptr::null_mut();
        // SAFETY: `comm` receives the handle; the id is passed by value.
        let r = unsafe { (a.comm_init_rank)(&mut comm, size as c_int, uid, rank as c_int) };
        check(a, &format!("rank {rank} of {size} joining the others"), r)?;
        Ok(Comm {
            comm,
            rank,
            size,
            broken: false,
        })
    }

    /// Queues `op` over the ranks of each `(device address, elements)`, in
    /// place, on `stream`, as one NCCL group (one launch for them all).
    ///
    /// # Safety
    /// Each address is a live allocation of this communicator's device
    /// holding at least its count of the op's elements, and `stream` is a
    /// live stream of that device; both stay so until the work is done.
    pub unsafe fn all_reduce(
        &mut self,
        bufs: &[(u64, usize)],
        op: Reduce,
        stream: cudarc::driver::sys::CUstream,
    ) -> Result<()> {
        let a = api()?;
        if self.broken {
            return Err(Error::device(
                "nccl",
                "all-reduce",
                "the communicator was aborted after an earlier failure",
            ));
        }
        let (dtype, red) = match op {
            Reduce::SumF32 => (ncclDataType_t::ncclFloat32, ncclRedOp_t::ncclSum),
            Reduce::SumF64 => (ncclDataType_t::ncclFloat64, ncclRedOp_t::ncclSum),
            Reduce::MaxU64 => (ncclDataType_t::ncclUint64, ncclRedOp_t::ncclMax),
            Reduce::SumBf16 => (ncclDataType_t::ncclBfloat16, ncclRedOp_t::ncclSum),
        };
        // SAFETY: group calls bracket the collectives queued between them.
        check(a, "starting a group", unsafe { (a.group_start)() })?;
        let mut first_err = Ok(());
        for &(ptr, count) in bufs {
            let p = ptr as usize as *mut c_void;
            // SAFETY: `ptr` is a live device allocation of at least `count`
            // elements of the op's type (the caller's buffers), reduced in
            // place on the device's own stream.
            let r = unsafe { (a.all_reduce)(p.cast_const(), p, count, dtype, red, self.comm, stream) };
            if first_err.is_ok() {
                first_err = check(a, "all-reduce", r);
            }
        }
        // SAFETY: closes the group opened above.
        let end = check(a, "ending a group", unsafe { (a.group_end)() });
        first_err.and(end)
    }

    /// Waits until `done` says the queued work has finished, checking NCCL
    /// for an error as it goes. Past `timeout` the communicator is aborted
    /// (which ends its kernels) and the error says that a rank stopped
    /// answering.
    pub fn wait(
        &mut self,
        what: &str,
        timeout: Option<Duration>,
        mut done: impl FnMut() -> Result<bool>,
    ) -> Result<()> {
        let a = api()?;
        let start = Instant::now();
        let mut pause = Duration::from_micros(20);
        loop {
            if done()? {
                return Ok(());
            }
            let mut async_err = SUCCESS;
            // SAFETY: reads the communicator's state into one int.
            check(a, "polling", unsafe {
                (a.comm_get_async_error)(self.comm, &mut async_err)
            })?;
            if async_err != SUCCESS && async_err != IN_PROGRESS {
                self.abort();
                return check(a, &format!("{what}: another rank failed"), async_err);
            }
            if let Some(timeout) = timeout.filter(|&t| start.elapsed() > t) {
                self.abort();
                return Err(Error::device(
                    "nccl",
                    what,
                    format!(
                        "rank {} of {}: no answer from the other ranks within {} s (--collective-timeout); a rank \
                         died or hangs (its own log says which and why); the last checkpoint is intact: \
                         continue with --resume",
                        self.rank,
                        self.size,
                        timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(5));
        }
    }

    fn abort(&mut self) {
        if !self.broken {
            self.broken = true;
            if let Ok(a) = api() {
                // SAFETY: ends the communicator's kernels and frees it; no
                // call uses it afterwards (`broken`).
                unsafe { (a.comm_abort)(self.comm) };
            }
        }
    }
}

impl Drop for Comm {
    fn drop(&mut self) {
        if !self.broken {
            if let Ok(a) = api() {
                // SAFETY: the device waited for its stream before dropping
                // the communicator; nothing uses it afterwards.
                unsafe { (a.comm_destroy)(self.comm) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_says_what_to_install() {
        let Err(e) = load(vec!["/nonexistent/libnccl.so.2".into()]) else {
            panic!("a library loaded from a path that does not exist");
        };
        assert!(
            e.contains("/nonexistent/libnccl.so.2") && e.contains("nvidia-nccl-cu13"),
            "{e}"
        );
    }

    #[test]
    fn a_library_without_nccl_names_the_missing_entry_point() {
        // The C library is there on every Linux machine and is not NCCL.
        let Err(e) = load(vec!["libc.so.6".into()]) else {
            panic!("libc was taken for NCCL");
        };
        assert!(e.contains("ncclGetVersion"), "{e}");
    }
}

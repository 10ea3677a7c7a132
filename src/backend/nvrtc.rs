//! NVRTC, loaded at run time: compiles the kernel sources for a GPU
//! architecture. A machine without NVRTC gets an error that says what to
//! install, never a crash.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use libloading::Library;

use super::kernels::COMMON_HEADER;
use crate::error::{Error, Result};

type Prog = *mut c_void;
type CreateFn = unsafe extern "C" fn(
    *mut Prog,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type CompileFn = unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int;
type SizeFn = unsafe extern "C" fn(Prog, *mut usize) -> c_int;
type GetFn = unsafe extern "C" fn(Prog, *mut c_char) -> c_int;
type DestroyFn = unsafe extern "C" fn(*mut Prog) -> c_int;
type VersionFn = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;

/// The library names tried, newest first; `NEMESIS_NVRTC` names a file directly.
const NAMES: [&str; 3] = ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

pub struct Nvrtc {
    lib: Library,
    pub path: PathBuf,
}

/// What one compilation produced.
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

impl Nvrtc {
    /// `NEMESIS_NVRTC`, else the usual library names on the loader's path.
    pub fn load() -> Result<Self> {
        if let Some(p) = std::env::var_os("NEMESIS_NVRTC") {
            return Self::load_from(Path::new(&p));
        }
        let mut last = String::new();
        for name in NAMES {
            match Self::load_from(Path::new(name)) {
                Ok(n) => return Ok(n),
                Err(e) => last = e.to_string(),
            }
        }
        Err(Error::invalid(
            "NVRTC",
            format!(
                "no NVRTC library found ({last}); install CUDA, or `pip install nvidia-cuda-nvrtc` and point \
                 NEMESIS_NVRTC at its libnvrtc.so"
            ),
        ))
    }

    pub fn load_from(path: &Path) -> Result<Self> {
        // SAFETY: loading NVRTC runs only its library initialisers.
        let lib = unsafe { Library::new(path) }
            .map_err(|e| Error::invalid("NVRTC", format!("cannot load {}: {e}", path.display())))?;
        let n = Nvrtc {
            lib,
            path: path.to_path_buf(),
        };
        n.version()?;
        Ok(n)
    }

    fn sym<T: Copy>(&self, name: &[u8]) -> Result<T> {
        // SAFETY: the symbol's type is NVRTC's documented C signature.
        unsafe { self.lib.get::<T>(name) }.map(|s| *s).map_err(|e| {
            Error::invalid(
                "NVRTC",
                format!("{} lacks {}: {e}", self.path.display(), String::from_utf8_lossy(name)),
            )
        })
    }

    pub fn version(&self) -> Result<(i32, i32)> {
        let f: VersionFn = self.sym(b"nvrtcVersion\0")?;
        let (mut major, mut minor) = (0, 0);
        // SAFETY: two valid out-pointers.
        check(unsafe { f(&mut major, &mut minor) }, "nvrtcVersion")?;
        Ok((major, minor))
    }

    /// Compiles `source` (one kernels/*.cu file) to a cubin for `arch`
    /// (e.g. "sm_90"), with kernels/common.cuh available to its include.
    pub fn compile(&self, name: &str, source: &str, arch: &str) -> Result<Compiled> {
        self.compile_with(name, source, arch, &[])
    }

    /// `compile` with extra NVRTC options (e.g. `--ptxas-options=-v`, whose
    /// report of registers and shared memory per kernel lands in the log).
    pub fn compile_with(&self, name: &str, source: &str, arch: &str, extra: &[&str]) -> Result<Compiled> {
        let create: CreateFn = self.sym(b"nvrtcCreateProgram\0")?;
        let compile: CompileFn = self.sym(b"nvrtcCompileProgram\0")?;
        let log_size: SizeFn = self.sym(b"nvrtcGetProgramLogSize\0")?;
        let get_log: GetFn = self.sym(b"nvrtcGetProgramLog\0")?;
        let cubin_size: SizeFn = self.sym(b"nvrtcGetCUBINSize\0")?;
        let get_cubin: GetFn = self.sym(b"nvrtcGetCUBIN\0")?;
        let destroy: DestroyFn = self.sym(b"nvrtcDestroyProgram\0")?;
        let cstr = |s: &str| CString::new(s).map_err(|_| Error::invalid("NVRTC", "a NUL byte in a source"));
        let (src, fname) = (cstr(source)?, cstr(name)?);
        let (hdr, hdr_name) = (cstr(COMMON_HEADER)?, cstr("common.cuh")?);
        let mut opts = vec![format!("--gpu-architecture={arch}"), "-std=c++17".to_string()];
        opts.extend(extra.iter().map(|o| o.to_string()));
        let opts: Vec<CString> = opts.iter().map(|o| cstr(o)).collect::<Result<_>>()?;
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let mut prog: Prog = std::ptr::null_mut();
        // SAFETY: every pointer is a live NUL-terminated string; the program
        // is destroyed on every path below.
        unsafe {
            check(
                create(
                    &mut prog,
                    src.as_ptr(),
                    fname.as_ptr(),
                    1,
                    &hdr.as_ptr(),
                    &hdr_name.as_ptr(),
                ),
                "nvrtcCreateProgram",
            )?;
            let status = compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
            let mut n = 0usize;
            log_size(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            get_log(prog, log.as_mut_ptr() as *mut c_char);
            let log = CStr::from_bytes_until_nul(&log)
                .map(|c| c.to_string_lossy().to_string())
                .unwrap_or_default();
            if status != 0 {
                destroy(&mut prog);
                return Err(Error::invalid("NVRTC", format!("{name} for {arch} failed:\n{log}")));
            }
            let mut size = 0usize;
            cubin_size(prog, &mut size);
            let mut cubin = vec![0u8; size];
            get_cubin(prog, cubin.as_mut_ptr() as *mut c_char);
            destroy(&mut prog);
            Ok(Compiled { cubin, log })
        }
    }
}

fn check(code: c_int, what: &str) -> Result<()> {
    if code == 0 {
        Ok(())
    } else {
        Err(Error::invalid("NVRTC", format!("{what} returned error {code}")))
    }
}

//! `nemesis compile-kernels`: every CUDA kernel through NVRTC for one GPU
//! architecture, into the folder a GPU run reads compiled kernels from
//! (`NEMESIS_KERNEL_CACHE`), so a machine with a GPU but little time (or no
//! NVRTC of the right version) compiles nothing. No GPU is needed.

use std::path::PathBuf;

use clap::Args;

use crate::backend::cuda::precompile;
use crate::backend::nvrtc::Nvrtc;
use crate::error::{Error, Result};

#[derive(Args, Debug)]
pub struct CompileKernelsArgs {
    /// GPU architecture to compile for (sm_90: H100 and H200; sm_80: A100).
    #[arg(long, default_value = "sm_90")]
    pub arch: String,
    /// Folder to write the compiled kernels into; point NEMESIS_KERNEL_CACHE
    /// at it on the GPU machine.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: &CompileKernelsArgs) -> Result<()> {
    let valid = a
        .arch
        .strip_prefix("sm_")
        .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_alphanumeric()));
    if !valid {
        return Err(Error::invalid(
            "--arch",
            format!("`{}` is not a GPU architecture such as sm_90", a.arch),
        ));
    }
    let nvrtc = Nvrtc::load()?;
    let (major, minor) = nvrtc.version()?;
    let mut progress = crate::progress::Progress::new("compile-kernels", crate::backend::kernels::SOURCES.len() as u64);
    let mut done = 0;
    let files = precompile(&nvrtc, &a.arch, &a.out, &mut |file| {
        progress.set(done, file);
        done += 1;
    })?;
    progress.finish();
    for f in &files {
        println!("{}", f.display());
    }
    let (n, arch, dir) = (files.len(), &a.arch, a.out.display());
    eprintln!(
        "{n} kernel files compiled for {arch} by NVRTC {major}.{minor} into {dir} (a GPU run reads them with \
         NEMESIS_KERNEL_CACHE={dir}; its NVRTC must be {major}.{minor} too)"
    );
    Ok(())
}

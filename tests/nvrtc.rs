//! Every kernel source compiles with NVRTC for sm_80 and sm_90, without
//! warnings. CI installs NVRTC from the `nvidia-cuda-nvrtc` wheel and sets
//! NEMESIS_REQUIRE_NVRTC=1, so there a missing library is a failure; where
//! the build found no NVRTC (build.rs), each test is ignored with the reason,
//! and `cargo test` counts and names them.

use nemesis::backend::kernels::{KERNELS, SOURCES};
use nemesis::backend::nvrtc::Nvrtc;

/// NVRTC: the build found it (or was told it is required), so failing to
/// load it now is a failure.
fn nvrtc() -> Nvrtc {
    Nvrtc::load().unwrap_or_else(|e| panic!("NVRTC was found at build time but does not load: {e}"))
}

#[test]
#[cfg_attr(
    not(nvrtc_found),
    ignore = "no NVRTC found at build time: set NEMESIS_NVRTC to a libnvrtc.so (README, Testing)"
)]
fn every_kernel_compiles_for_sm80_and_sm90() {
    let nvrtc = nvrtc();
    let (major, minor) = nvrtc.version().unwrap();
    eprintln!("NVRTC {major}.{minor} from {}", nvrtc.path.display());
    assert!(SOURCES.len() >= 3 && KERNELS.len() >= 6);
    for (file, src) in SOURCES {
        for arch in ["sm_80", "sm_90"] {
            let c = nvrtc.compile(file, src, arch).unwrap_or_else(|e| panic!("{e}"));
            assert!(!c.cubin.is_empty(), "{file} {arch}: empty cubin");
            assert!(
                !c.log.to_lowercase().contains("warning"),
                "{file} {arch}: warnings:\n{}",
                c.log
            );
        }
    }
}

#[test]
fn a_missing_library_is_a_clear_error() {
    let e = Nvrtc::load_from(std::path::Path::new("/nonexistent/libnvrtc.so.13"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("NVRTC") && e.contains("/nonexistent/libnvrtc.so.13"), "{e}");
}

#[test]
#[cfg_attr(
    not(nvrtc_found),
    ignore = "no NVRTC found at build time: set NEMESIS_NVRTC to a libnvrtc.so (README, Testing)"
)]
fn a_compile_error_names_the_file() {
    let nvrtc = nvrtc();
    let e = nvrtc
        .compile(
            "broken.cu",
            "extern \"C\" __global__ void k() { undefined_thing(); }",
            "sm_80",
        )
        .err()
        .unwrap();
    let e = e.to_string();
    assert!(e.contains("broken.cu") && e.contains("undefined_thing"), "{e}");
}

/// ptxas's report of registers, spills and shared memory per flash kernel
/// (printed for docs/BENCHMARKS.md; run with `--nocapture`).
#[test]
#[cfg_attr(
    not(nvrtc_found),
    ignore = "no NVRTC found at build time: set NEMESIS_NVRTC to a libnvrtc.so (README, Testing)"
)]
fn flash_kernel_resources() {
    let nvrtc = nvrtc();
    let (_, src) = SOURCES
        .iter()
        .find(|(f, _)| *f == "flash.cu")
        .expect("flash.cu is embedded");
    for arch in ["sm_80", "sm_90"] {
        let c = nvrtc
            .compile_with("flash.cu", src, arch, &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{arch}:\n{}", c.log);
        for k in [
            "flash_forward_bf16",
            "flash_backward_dq_bf16",
            "flash_backward_dkv_bf16",
        ] {
            assert!(c.log.contains(k), "{arch}: no ptxas report for {k}:\n{}", c.log);
        }
        assert!(c.log.contains("registers"), "{}", c.log);
        // The forward and dQ kernels keep their accumulators in registers:
        // no stack frame (a rolled loop over the accumulator array once put
        // 288 bytes of it in local memory).
        for k in [
            "flash_forward_bf16",
            "flash_forward_f32",
            "flash_backward_dq_bf16",
            "flash_backward_dq_f32",
        ] {
            let report = ptxas_report(&c.log, k);
            assert!(
                report.contains(" 0 bytes stack frame"),
                "{arch}: {k} uses local memory:\n{report}"
            );
        }
    }
}

/// The lines ptxas prints for entry function `kernel`.
fn ptxas_report(log: &str, kernel: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in log.lines() {
        if line.contains("Compiling entry function") {
            inside = line.contains(&format!("'{kernel}'"));
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Registers per thread of every kernel, as ptxas reports them for `arch`.
fn ptxas_registers(nvrtc: &Nvrtc, arch: &str) -> std::collections::BTreeMap<String, u32> {
    let mut out = std::collections::BTreeMap::new();
    for (file, src) in SOURCES {
        let c = nvrtc
            .compile_with(file, src, arch, &["--ptxas-options=-v"])
            .unwrap_or_else(|e| panic!("{e}"));
        let mut kernel: Option<String> = None;
        for line in c.log.lines() {
            if let Some(at) = line.find("Compiling entry function '") {
                let rest = &line[at + "Compiling entry function '".len()..];
                kernel = rest.split('\'').next().map(str::to_string);
            } else if let (Some(k), Some(at)) = (&kernel, line.find("Used ")) {
                let n = line[at + 5..]
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .unwrap_or_else(|| panic!("unreadable ptxas line: {line}"));
                out.insert(k.clone(), n);
                kernel = None;
            }
        }
    }
    out
}

/// kernels/registers.sm_90 holds what ptxas reports for every kernel on
/// sm_90: the emulator refuses a launch whose block would need more
/// registers than a multiprocessor has, so the table must be current.
#[test]
#[cfg_attr(
    not(nvrtc_found),
    ignore = "no NVRTC found at build time: set NEMESIS_NVRTC to a libnvrtc.so (README, Testing)"
)]
fn the_register_table_is_what_ptxas_reports() {
    let nvrtc = nvrtc();
    let fresh = ptxas_registers(&nvrtc, "sm_90");
    assert_eq!(fresh.len(), KERNELS.len(), "a ptxas report for every kernel: {fresh:?}");
    let (major, minor) = nvrtc.version().unwrap();
    let mut table = format!(
        "# Registers per thread on sm_90, from the ptxas report of NVRTC {major}.{minor}\n\
         # (tests/nvrtc.rs prints this table when it is out of date).\n"
    );
    for (k, n) in &fresh {
        table.push_str(&format!("{k} {n}\n"));
    }
    let committed: std::collections::BTreeMap<String, u32> = nemesis::backend::limits::REGISTERS_SM90
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    assert!(
        committed == fresh,
        "kernels/registers.sm_90 is out of date; write this into it:\n{table}"
    );
}

/// `nemesis compile-kernels` writes each source's compiled kernels under
/// the name the CUDA device looks up, so a GPU run given the folder
/// compiles nothing.
#[test]
#[cfg_attr(
    not(nvrtc_found),
    ignore = "no NVRTC found at build time: set NEMESIS_NVRTC to a libnvrtc.so (README, Testing)"
)]
fn precompiled_kernels_are_named_as_the_device_looks_them_up() {
    let nvrtc = nvrtc();
    let dir = std::env::temp_dir().join(format!("nemesis-precompile-{}", std::process::id()));
    let written = nemesis::backend::cuda::precompile(&nvrtc, "sm_90", &dir, &mut |_| {}).unwrap();
    let version = nvrtc.version().unwrap();
    assert_eq!(written.len(), SOURCES.len());
    for (file, _) in SOURCES {
        let path = dir.join(nemesis::backend::cuda::cached_module_name(file, "sm_90", version));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(!bytes.is_empty(), "{}", path.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

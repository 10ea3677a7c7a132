//! Build-time work:
//! - the git commit for `nemesis --version`;
//! - the CUDA kernels under kernels/: their sources are embedded for NVRTC
//!   (compiled at run time for the device), and compiled a second time with
//!   the host C++ compiler against kernels/emu/ for the emulator, with a
//!   launch shim per kernel and the matching Rust declarations.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

struct Kernel {
    file: String,
    name: String,
    params: Vec<(String, String)>,
}

/// `extern "C" __global__ void NAME(TYPE NAME, ...)` declarations of a source.
fn kernels_of(file: &str, src: &str) -> Vec<Kernel> {
    let mut out = Vec::new();
    let marker = "extern \"C\" __global__ void ";
    let mut rest = src;
    while let Some(i) = rest.find(marker) {
        rest = &rest[i + marker.len()..];
        let open = rest.find('(').expect("kernel parameter list");
        let close = rest.find(')').expect("kernel parameter list end");
        let name = rest[..open].trim().to_string();
        let params = rest[open + 1..close]
            .split(',')
            .map(|p| {
                let p = p.split_whitespace().collect::<Vec<_>>().join(" ");
                let cut = p.rfind([' ', '*']).expect("typed parameter");
                (p[..=cut].trim().to_string(), p[cut + 1..].trim().to_string())
            })
            .collect();
        out.push(Kernel {
            file: file.to_string(),
            name,
            params,
        });
    }
    out
}

/// How a C parameter type crosses from Rust: its Rust FFI type, the
/// argument kind (`kernels::ParamKind`), and its size in bytes in the
/// kernel's parameter block (checked by static_assert in the emulator's
/// build, and against the CUDA graph node packing by tests/kernel_params.rs).
fn param_type(c: &str) -> (&'static str, &'static str, usize) {
    match c {
        "const float*" => ("*const f32", "Ptr", 8),
        "float*" => ("*mut f32", "Ptr", 8),
        "const int*" => ("*const i32", "Ptr", 8),
        "int*" => ("*mut i32", "Ptr", 8),
        "double*" => ("*mut f64", "Ptr", 8),
        "const int16_t*" => ("*const i16", "Ptr", 8),
        "const uint16_t*" => ("*const u16", "Ptr", 8),
        "uint16_t*" => ("*mut u16", "Ptr", 8),
        "const uint64_t*" => ("*const u64", "Ptr", 8),
        "const uint32_t*" => ("*const u32", "Ptr", 8),
        "int" => ("i32", "I32", 4),
        "float" => ("f32", "F32", 4),
        "double" => ("f64", "F64", 8),
        "uint64_t" => ("u64", "U64", 8),
        "uint32_t" => ("u32", "U32", 4),
        "RngStream" => ("crate::backend::kernels::RngStreamC", "Rng", 16),
        "SeqLayout" => ("crate::backend::kernels::SeqLayoutC", "Layout", 28),
        other => panic!("kernel parameter type `{other}` has no Rust mapping in build.rs"),
    }
}

/// A kernel parameter's name as a Rust identifier.
fn rust_name(n: &str) -> String {
    match n {
        "type" | "ref" | "mod" | "in" | "loop" | "match" | "move" | "self" | "fn" | "impl" | "use" | "where"
        | "struct" | "enum" | "trait" | "let" | "mut" | "pub" | "const" | "static" | "crate" | "super" | "dyn" => {
            format!("r#{n}")
        }
        _ => n.to_string(),
    }
}

/// Whether the NVRTC tests can run here: `NEMESIS_REQUIRE_NVRTC` set (CI:
/// they run, and fail without it), `NEMESIS_NVRTC` naming a file, or a
/// `libnvrtc.so*` on the loader path or in CUDA's usual folders. Where not,
/// tests/nvrtc.rs marks them ignored with the reason, so `cargo test`
/// counts and names them instead of reporting a silent `ok`.
fn nvrtc_found() -> bool {
    if std::env::var_os("NEMESIS_REQUIRE_NVRTC").is_some() {
        return true;
    }
    if let Some(p) = std::env::var_os("NEMESIS_NVRTC") {
        return PathBuf::from(p).is_file();
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.iter().any(|d| {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("libnvrtc.so"))
            })
            .unwrap_or(false)
    })
}

fn main() {
    println!("cargo:rustc-check-cfg=cfg(nvrtc_found)");
    println!("cargo:rerun-if-env-changed=NEMESIS_REQUIRE_NVRTC");
    println!("cargo:rerun-if-env-changed=NEMESIS_NVRTC");
    println!("cargo:rerun-if-env-changed=LD_LIBRARY_PATH");
    if nvrtc_found() {
        println!("cargo:rustc-cfg=nvrtc_found");
    }
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    println!("cargo:rerun-if-changed=kernels");
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NEMESIS_GIT_COMMIT={commit}");

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let kdir = root.join("kernels");
    let mut files: Vec<String> = std::fs::read_dir(&kdir)
        .expect("kernels/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".cu"))
        .collect();
    files.sort();
    let mut kernels = Vec::new();
    for f in &files {
        let src = std::fs::read_to_string(kdir.join(f)).expect("kernel source");
        kernels.extend(kernels_of(f, &src));
    }
    // The emulator's own self-tests (kernels/emu/selftest.cu): kernels that
    // break a GPU rule on purpose, so tests can show the emulator catches
    // it. Never given to NVRTC.
    let selftest = kdir.join("emu").join("selftest.cu");
    let selftest_kernels = kernels_of(
        "emu/selftest.cu",
        &std::fs::read_to_string(&selftest).expect("kernels/emu/selftest.cu"),
    );

    // Sources for NVRTC.
    let mut rs = String::new();
    let _ = writeln!(rs, "/// Every kernel source: (file name, text).");
    let _ = writeln!(rs, "pub const SOURCES: &[(&str, &str)] = &[");
    for f in &files {
        let _ = writeln!(
            rs,
            "    ({f:?}, include_str!({:?})),",
            kdir.join(f).display().to_string()
        );
    }
    let _ = writeln!(rs, "];");
    let _ = writeln!(
        rs,
        "/// The common header the sources include.\npub const COMMON_HEADER: &str = include_str!({:?});",
        kdir.join("common.cuh").display().to_string()
    );
    let _ = writeln!(
        rs,
        "/// Every kernel: (file, name).\npub const KERNELS: &[(&str, &str)] = &["
    );
    for k in &kernels {
        let _ = writeln!(rs, "    ({:?}, {:?}),", k.file, k.name);
    }
    let _ = writeln!(rs, "];");
    let _ = writeln!(
        rs,
        "/// Every kernel's parameters as declared (the emulator's self-tests too):\n\
         /// (kernel, [(C type, name, kind, bytes)]).\n\
         pub const SIGNATURES: &[(&str, &[Param])] = &["
    );
    for k in kernels.iter().chain(&selftest_kernels) {
        let params: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| {
                let (_, kind, bytes) = param_type(t);
                format!("Param {{ ctype: {t:?}, name: {n:?}, kind: ParamKind::{kind}, bytes: {bytes} }}")
            })
            .collect();
        let _ = writeln!(rs, "    ({:?}, &[{}]),", k.name, params.join(", "));
    }
    let _ = writeln!(rs, "];");
    std::fs::write(out.join("kernel_sources.rs"), rs).expect("write kernel_sources.rs");

    // One typed launcher per kernel, its parameters named and typed as the
    // source declares them: every device launches through these, so a
    // changed signature fails to compile where it is launched.
    let mut ls = String::from(
        "// Generated by build.rs from the kernels' declarations.\n\
         use crate::device::{Arg, Buffer, DeviceApi, Launch, SeqLayout};\n\
         use crate::error::Result;\n\
         use crate::rng::RngStream;\n\n",
    );
    for k in kernels.iter().chain(&selftest_kernels) {
        let mut params = Vec::new();
        let mut args = Vec::new();
        for (t, n) in &k.params {
            let name = rust_name(n);
            let (ty, arg) = match param_type(t).1 {
                "Ptr" => ("&Buffer", format!("Arg::Buf({name}.id)")),
                "I32" => ("i32", format!("Arg::I32({name})")),
                "U32" => ("u32", format!("Arg::U32({name})")),
                "U64" => ("u64", format!("Arg::U64({name})")),
                "F32" => ("f32", format!("Arg::F32({name})")),
                "F64" => ("f64", format!("Arg::F64({name})")),
                "Rng" => ("RngStream", format!("Arg::Rng({name})")),
                "Layout" => ("SeqLayout", format!("Arg::Layout({name})")),
                other => panic!("no launcher type for kind {other}"),
            };
            params.push(format!("{name}: {ty}"));
            args.push(arg);
        }
        let decl: Vec<String> = k.params.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let _ = writeln!(
            ls,
            "/// `{}({})` of kernels/{}.\npub fn {}(dev: &dyn DeviceApi, cfg: &Launch, {}) -> Result<()> {{\n    \
             dev.launch({:?}, cfg, &[{}])\n}}\n",
            k.name,
            decl.join(", "),
            k.file,
            k.name,
            params.join(", "),
            k.name,
            args.join(", ")
        );
    }
    std::fs::write(out.join("launchers.rs"), ls).expect("write launchers.rs");

    // Integer constants the kernels and the host share (`#define NAME n` in
    // kernels/*.cu and common.cuh), so a tile size or mode is written once.
    let mut cs = String::from("// Generated by build.rs from the kernels' #defines.\n");
    let mut headers = files.clone();
    headers.push("common.cuh".to_string());
    for f in &headers {
        let src = std::fs::read_to_string(kdir.join(f)).expect("kernel source");
        for line in src.lines() {
            let mut it = line.split_whitespace();
            if it.next() != Some("#define") {
                continue;
            }
            let (Some(name), Some(value)) = (it.next(), it.next()) else {
                continue;
            };
            if name
                .chars()
                .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && value.parse::<u32>().is_ok()
            {
                let _ = writeln!(cs, "/// `{name}` of kernels/{f}.\npub const {name}: u32 = {value};");
            }
        }
    }
    std::fs::write(out.join("kernel_consts.rs"), cs).expect("write kernel_consts.rs");

    // Registers per thread on sm_90 (kernels/registers.sm_90: `kernel
    // registers` lines from ptxas, kept current by tests/nvrtc.rs).
    let mut regs = String::from(
        "/// Registers per thread on sm_90: (kernel, registers).\npub const REGISTERS_SM90: &[(&str, u32)] = &[\n",
    );
    if let Ok(table) = std::fs::read_to_string(kdir.join("registers.sm_90")) {
        for line in table
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let mut it = line.split_whitespace();
            let (Some(k), Some(n)) = (it.next(), it.next().and_then(|n| n.parse::<u32>().ok())) else {
                panic!("kernels/registers.sm_90: `{line}` is not `kernel registers`");
            };
            let _ = writeln!(regs, "    ({k:?}, {n}),");
        }
    }
    regs.push_str("];\n");
    std::fs::write(out.join("registers.rs"), regs).expect("write registers.rs");

    // The emulator: one translation unit with every kernel and its shim.
    let mut cpp = String::from("#define NEMESIS_EMU 1\n");
    for f in &files {
        let _ = writeln!(cpp, "#include \"{}\"", kdir.join(f).display());
    }
    let _ = writeln!(cpp, "#include \"{}\"", selftest.display());
    let kernels: Vec<Kernel> = kernels.into_iter().chain(selftest_kernels).collect();
    // The parameter sizes the Rust side packs (param_type) are the sizes
    // the kernels declare.
    // The struct arguments' fields sit where the Rust side packs them
    // (kernels::param_bytes): 32-bit fields in declaration order.
    cpp.push_str("#include <cstddef>\n");
    for (ty, fields) in [
        ("RngStream", &["k0", "k1", "s0", "s1"][..]),
        (
            "SeqLayout",
            &[
                "outer_count",
                "inner_count",
                "outer_stride",
                "inner_stride",
                "len",
                "step",
                "offset",
            ][..],
        ),
    ] {
        for (i, f) in fields.iter().enumerate() {
            let _ = writeln!(
                cpp,
                "static_assert(offsetof({ty}, {f}) == {}, \"build.rs packs {ty}.{f} at byte {}\");",
                4 * i,
                4 * i
            );
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for k in &kernels {
        for (t, _) in &k.params {
            if seen.insert(t.clone()) {
                let _ = writeln!(
                    cpp,
                    "static_assert(sizeof({t}) == {}, \"build.rs packs `{t}` as {} bytes\");",
                    param_type(t).2,
                    param_type(t).2
                );
            }
        }
    }
    let mut ffi = String::from("extern \"C\" {\n");
    for k in &kernels {
        let decl: Vec<String> = k.params.iter().map(|(t, n)| format!("{t} {n}")).collect();
        let names: Vec<&str> = k.params.iter().map(|(_, n)| n.as_str()).collect();
        let _ = writeln!(
            cpp,
            "extern \"C\" const char* emu_launch_{}(const EmuLaunch* cfg, {}) {{ return emu_run(cfg, [&] {{ {}({}); }}); }}",
            k.name,
            decl.join(", "),
            k.name,
            names.join(", ")
        );
        let rparams: Vec<String> = k
            .params
            .iter()
            .map(|(t, n)| format!("{n}: {}", param_type(t).0))
            .collect();
        let _ = writeln!(
            ffi,
            "    /// Runs `{}` of kernels/{} on the CPU: null, or what the launch broke.\n    pub fn emu_launch_{}(cfg: *const EmuLaunch, {}) -> *const std::ffi::c_char;",
            k.name,
            k.file,
            k.name,
            rparams.join(", ")
        );
    }
    ffi.push_str("}\n");
    // Launch by name with checked argument kinds, for the device trait.
    ffi.push_str(
        "/// Runs kernel `name` with `args`, checking their number and kinds.\n\
         ///\n/// # Safety\n/// Pointer arguments must point at buffers large enough for the launch.\n\
         pub unsafe fn launch_by_name(\n    name: &str,\n    cfg: &EmuLaunch,\n    args: &[crate::device::Arg],\n    ptr: &mut dyn FnMut(u64) -> Result<*mut u8, String>,\n) -> Result<(), String> {\n    use crate::device::Arg;\n    match name {\n",
    );
    for k in &kernels {
        let _ = writeln!(
            ffi,
            "        {:?} => {{\n            if args.len() != {} {{ return Err(format!(\"{} takes {} arguments, got {{}}\", args.len())); }}",
            k.name,
            k.params.len(),
            k.name,
            k.params.len()
        );
        let mut call = Vec::new();
        for (i, (t, n)) in k.params.iter().enumerate() {
            let (rtype, kind, _) = param_type(t);
            let variant = if kind == "Ptr" { "Buf" } else { kind };
            let _ = writeln!(
                ffi,
                "            let Arg::{variant}(a{i}) = args[{i}] else {{ return Err(\"{}: argument {i} (`{n}`) must be {variant}\".to_string()); }};",
                k.name
            );
            call.push(match kind {
                "Ptr" => format!("ptr(a{i})? as {rtype}"),
                "Rng" | "Layout" => format!("a{i}.into()"),
                _ => format!("a{i}"),
            });
        }
        let _ = writeln!(
            ffi,
            "            emu_result(emu_launch_{}(cfg, {}))\n        }}",
            k.name,
            call.join(", ")
        );
    }
    ffi.push_str("        other => Err(format!(\"no kernel named `{other}`\")),\n    }\n}\n");
    ffi.push_str(
        "/// A shim's answer: null, or what the launch broke (a C string the\n\
         /// emulator keeps until its next launch on this thread).\n\
         fn emu_result(e: *const std::ffi::c_char) -> Result<(), String> {\n    \
         if e.is_null() {\n        Ok(())\n    } else {\n        \
         // SAFETY: a non-null answer is a NUL-terminated string owned by the emulator.\n        \
         Err(unsafe { std::ffi::CStr::from_ptr(e) }.to_string_lossy().into_owned())\n    }\n}\n",
    );
    let shim = out.join("emu_kernels.cpp");
    std::fs::write(&shim, cpp).expect("write emu_kernels.cpp");
    std::fs::write(out.join("emu_ffi.rs"), ffi).expect("write emu_ffi.rs");
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .include(&kdir)
        .file(&shim)
        .file(kdir.join("emu").join("emu.cpp"))
        .flag_if_supported("-pthread")
        // `#pragma unroll` is for NVRTC; the host compiler may ignore it.
        .flag_if_supported("-Wno-unknown-pragmas")
        .warnings(true)
        .opt_level(2)
        .compile("nemesis_emu");
}

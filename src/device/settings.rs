//! A device's settings, chosen once when it opens: which attention kernels
//! and GEMM library it uses, and whether mixed-precision activations that
//! only bf16 readers take are stored as bf16 alone. The environment
//! variables that switch them (for side-by-side runs on a GPU) are read
//! there and nowhere else.

/// Which attention kernels a device runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionChoice {
    /// The flash kernels (kernels/flash.cu): bf16 on the tensor cores in
    /// mixed precision, f32 otherwise.
    Flash,
    /// The plain kernels (kernels/attention.cu), any head dim.
    Plain,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceSettings {
    /// `NEMESIS_ATTENTION=plain` asks for the plain kernels.
    pub attention: AttentionChoice,
    /// In mixed precision, store an activation whose readers all take bf16
    /// as bf16 alone; `NEMESIS_BF16_ACTIVATIONS=0` keeps f32 beside it.
    pub bf16_activations: bool,
    /// `NEMESIS_GEMM=cublas`: the classic cuBLAS SGEMM instead of cuBLASLt
    /// (CUDA, f32 only).
    pub classic_cublas: bool,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        DeviceSettings {
            attention: AttentionChoice::Flash,
            bf16_activations: true,
            classic_cublas: false,
        }
    }
}

impl DeviceSettings {
    /// The defaults, with whatever the environment switches.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string());
        DeviceSettings {
            attention: match var("NEMESIS_ATTENTION").as_deref() {
                Some("plain") => AttentionChoice::Plain,
                _ => AttentionChoice::Flash,
            },
            bf16_activations: var("NEMESIS_BF16_ACTIVATIONS").as_deref() != Some("0"),
            classic_cublas: var("NEMESIS_GEMM").as_deref() == Some("cublas"),
        }
    }
}

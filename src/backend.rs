//! Device selection. Models and training code only see a [`burn::tensor::Device`], so a backend
//! is a cargo feature plus one match arm here.

use burn::tensor::Device;

/// The compute backends this build knows about.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// burn's pure-Rust CPU backend (default).
    Flex,
    /// LibTorch through `tch` (cargo feature `tch`).
    Tch,
    /// CUDA through CubeCL (cargo feature `cuda`).
    Cuda,
    /// WebGPU/Vulkan/Metal through WGPU (cargo feature `wgpu`).
    Wgpu,
}

impl Backend {
    /// The backend used when none is asked for: the first compiled-in one of flex, tch, cuda, wgpu.
    pub fn default_compiled() -> Self {
        if cfg!(feature = "flex") {
            Backend::Flex
        } else if cfg!(feature = "tch") {
            Backend::Tch
        } else if cfg!(feature = "cuda") {
            Backend::Cuda
        } else {
            Backend::Wgpu
        }
    }

    /// Short lowercase name, as used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Tch => "tch",
            Backend::Cuda => "cuda",
            Backend::Wgpu => "wgpu",
        }
    }

    /// The inference (non-autodiff) device of this backend, or an error naming the missing cargo feature.
    pub fn device(self) -> anyhow::Result<Device> {
        match self {
            #[cfg(feature = "flex")]
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            Backend::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => Ok(Device::wgpu(Default::default())),
            #[allow(unreachable_patterns)]
            other => anyhow::bail!(
                "backend `{}` is not compiled into this binary; rebuild with `--features {}`",
                other.name(),
                other.name()
            ),
        }
    }
}

/// Keeps freed tensor buffers in the process instead of returning them to the OS.
///
/// A training step allocates and frees the same few-megabyte buffers every step. glibc serves
/// blocks above its mmap threshold (128 KiB at start) with fresh `mmap`s and trims the heap top
/// eagerly, so every step paid page faults and zeroing for each of them: the student's step took
/// 12 ms instead of 8 ms until something else happened to raise the thresholds. Raising them
/// once at start-up makes the fast case the normal one. Peak memory is unchanged (the buffers
/// are reused); only the return of freed memory to the OS is deferred.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread
    // exists and takes plain integers.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20); // glibc's maximum on 64-bit
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

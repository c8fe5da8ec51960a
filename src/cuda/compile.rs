//! NVRTC compilation of the project's `.cu` sources, with an on-disk cache keyed by the source,
//! the architecture and the options, so that only the first run pays for compilation.

use anyhow::Result;
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

/// A `.cu` file embedded in the binary.
pub struct KernelSource {
    /// Module name (also the cache and error-message name).
    pub name: &'static str,
    pub code: &'static str,
}

/// `<toolkit>/include`, which NVRTC needs for `cuda_bf16.h`: from `CUDA_HOME` or `CUDA_PATH`,
/// else `/usr/local/cuda`.
pub fn cuda_include_dir() -> PathBuf {
    let root = std::env::var_os("CUDA_HOME")
        .or_else(|| std::env::var_os("CUDA_PATH"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/local/cuda"));
    root.join("include")
}

fn options(arch: &'static str) -> CompileOptions {
    let mut options = vec!["--std=c++17".into(), "-default-device".into()];
    // Source lines in the PTX, for a profiler's per-line counters (`GDN_NVRTC_LINEINFO=1`; part
    // of the cache key like every option, so such a build never serves a plain run).
    if std::env::var_os("GDN_NVRTC_LINEINFO").is_some_and(|v| v == "1") {
        options.push("-lineinfo".into());
    }
    CompileOptions {
        arch: Some(arch),
        include_paths: vec![cuda_include_dir().display().to_string()],
        options,
        ..Default::default()
    }
}

/// gdn's cache folder: `GDN_CACHE_DIR`, else `$XDG_CACHE_HOME/gdn`, else `~/.cache/gdn`.
pub(crate) fn cache_dir() -> Option<PathBuf> {
    std::env::var_os("GDN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("gdn")))
        .or_else(|| std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/gdn")))
}

fn cache_path(source: &KernelSource, arch: &'static str) -> Option<PathBuf> {
    let base = cache_dir()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (source.code, arch, format!("{:?}", options_key(arch))).hash(&mut h);
    Some(
        base.join("kernels")
            .join(format!("{}-{arch}-{:016x}.ptx", source.name, h.finish())),
    )
}

fn options_key(arch: &'static str) -> Vec<String> {
    let o = options(arch);
    let mut k = o.options.clone();
    k.extend(o.include_paths);
    k
}

/// Compiles those of `sources` that are not in the cache yet, one thread each (NVRTC compiles one
/// program per thread, and a first run of the selftest or the kernel bench needs the three
/// delta-rule modules, most of a minute each), and says so since it takes a while. Errors are
/// left to the compile that needs the module, which reports them in its context.
pub fn warm_cache(sources: &[&'static KernelSource], arch: &'static str) {
    let missing: Vec<_> = sources
        .iter()
        .filter(|s| cache_path(s, arch).is_some_and(|p| !p.exists()))
        .collect();
    if missing.is_empty() {
        return;
    }
    eprintln!(
        "compiling {} CUDA modules for {arch} (first run only; cached for the next)",
        missing.len()
    );
    std::thread::scope(|sc| {
        for &&src in &missing {
            sc.spawn(move || compile_ptx(src, arch).ok());
        }
    });
}

/// Compiles `source` to PTX for `arch` (no GPU needed), using the cache when it can.
pub fn compile_ptx(source: &KernelSource, arch: &'static str) -> Result<Ptx> {
    let cached = cache_path(source, arch);
    if let Some(text) = cached
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok())
    {
        return Ok(Ptx::from_src(text));
    }
    let opts = CompileOptions {
        name: Some(format!("{}.cu", source.name)),
        ..options(arch)
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(source.code, opts).map_err(|e| match e {
        cudarc::nvrtc::CompileError::CompileError { log, .. } => {
            anyhow::anyhow!(
                "NVRTC failed to compile `{}.cu` for {arch}:\n{}",
                source.name,
                log.to_string_lossy()
            )
        }
        other => anyhow::anyhow!("NVRTC failed on `{}.cu`: {other:?}", source.name),
    })?;
    if let Some(path) = cached {
        write_cache_file(&path, ptx.to_src().as_bytes());
    }
    Ok(ptx)
}

/// Writes a file of gdn's cache folder (atomically, its folder created as needed). The cache is
/// an optimisation: failing to write it is not an error, only a later run's lost time.
pub(crate) fn write_cache_file(path: &std::path::Path, bytes: &[u8]) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = crate::io::write_atomic(path, bytes);
}

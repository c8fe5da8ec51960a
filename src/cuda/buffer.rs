//! Moving host data to and from the device: f32 host vectors stored on the device as bf16 or f32,
//! and back. These synchronise the stream, so they belong in set-up, checkpoints and tests, not in
//! a training or decode step.

use super::Gpu;
use anyhow::{Context, Result};
use cudarc::driver::{CudaSlice, DevicePtr, DeviceRepr, ValidAsZeroBits};
use half::bf16;

/// Rounds to the nearest bf16 (ties to even), as `__float2bfloat16` does.
pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}

/// `x` as the f32 values its bf16 rounding represents.
pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
}

/// A new device buffer holding `x`.
pub fn upload<T: DeviceRepr>(gpu: &Gpu, x: &[T]) -> Result<CudaSlice<T>> {
    gpu.stream
        .clone_htod(x)
        .with_context(|| format!("copying {} elements to the GPU", x.len()))
}

pub fn upload_f32(gpu: &Gpu, x: &[f32]) -> Result<CudaSlice<f32>> {
    upload(gpu, x)
}

/// `x` rounded to bf16 on the device.
pub fn upload_bf16(gpu: &Gpu, x: &[f32]) -> Result<CudaSlice<bf16>> {
    upload(gpu, &to_bf16(x))
}

/// A zero-filled device buffer.
pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(gpu: &Gpu, n: usize) -> Result<CudaSlice<T>> {
    gpu.stream
        .alloc_zeros(n)
        .with_context(|| format!("allocating {n} elements on the GPU"))
}

/// The contents of a device buffer (waits for the queued work).
pub fn download<T: DeviceRepr, S: DevicePtr<T>>(gpu: &Gpu, x: &S) -> Result<Vec<T>> {
    let v = gpu
        .stream
        .clone_dtoh(x)
        .with_context(|| format!("copying {} elements from the GPU", x.len()))?;
    gpu.sync()?;
    Ok(v)
}

pub fn download_f32<S: DevicePtr<f32>>(gpu: &Gpu, x: &S) -> Result<Vec<f32>> {
    download(gpu, x)
}

/// A bf16 device buffer widened to f32 (exact).
pub fn download_bf16<S: DevicePtr<bf16>>(gpu: &Gpu, x: &S) -> Result<Vec<f32>> {
    Ok(download(gpu, x)?.into_iter().map(|v| v.to_f32()).collect())
}

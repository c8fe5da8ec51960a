//! Reading and writing tensors in the safetensors format (through the `safetensors` crate).
//!
//! Writing always stores F32. Reading accepts F32, F64, BF16 and F16 and returns f32: BF16 is
//! widened exactly (it is the upper half of an f32), F16 is decoded exactly by hand (normals,
//! subnormals, ±0, ±inf, NaN), F64 is rounded to the nearest f32 (values beyond f32's range
//! become ±inf).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// One tensor read from a file, converted to f32; `data` is row-major with `shape`.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Serialises f32 tensors (dtype F32) with optional string metadata to safetensors bytes.
/// Errors on a duplicate name or a shape whose element count differs from the data length.
pub fn to_bytes(
    tensors: &[(&str, &[usize], &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>> {
    let mut seen = HashSet::new();
    let mut raw: Vec<Vec<u8>> = Vec::with_capacity(tensors.len());
    for &(name, shape, data) in tensors {
        if !seen.insert(name) {
            bail!("cannot serialise tensors: the name {name:?} is given twice");
        }
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(data.len()) {
            bail!(
                "cannot serialise tensor {name:?}: shape {shape:?} does not match its {} values",
                data.len()
            );
        }
        raw.push(data.iter().flat_map(|x| x.to_le_bytes()).collect());
    }
    let mut views = Vec::with_capacity(tensors.len());
    for (&(name, shape, _), bytes) in tensors.iter().zip(&raw) {
        let view = TensorView::new(Dtype::F32, shape.to_vec(), bytes)
            .map_err(|e| anyhow!("cannot serialise tensor {name:?}: {e}"))?;
        views.push((name, view));
    }
    safetensors::serialize(views, metadata).map_err(|e| anyhow!("cannot serialise tensors: {e}"))
}

/// Decodes an IEEE 754 half-precision value exactly.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x03ff) as u32;
    match exp {
        // ±0 and subnormals: mant · 2^-24, exact in f32.
        0 => {
            let magnitude = mant as f32 * f32::from_bits(0x3380_0000); // 2^-24
            f32::from_bits(magnitude.to_bits() | sign)
        }
        // ±inf (mant = 0) and NaN (payload kept in the top mantissa bits).
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (mant << 13)),
        // Normal: rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (mant << 13)),
    }
}

/// Widens a bfloat16 value (the upper 16 bits of an f32) exactly.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

fn decode(name: &str, dtype: Dtype, bytes: &[u8], origin: &str) -> Result<Vec<f32>> {
    let u16s = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    };
    Ok(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        Dtype::BF16 => u16s().map(bf16_to_f32).collect(),
        Dtype::F16 => u16s().map(f16_to_f32).collect(),
        other => bail!(
            "{origin}: tensor {name:?} has dtype {other}, which is not supported (use F32, F64, BF16 or F16)"
        ),
    })
}

/// Parses safetensors bytes; F32, F64, BF16 and F16 tensors are converted to f32, any other
/// dtype is an error naming the tensor and dtype. `origin` (e.g. a file name) starts every error
/// message. Tensors come back sorted by name; the metadata is empty when the file has none.
pub fn from_bytes(
    bytes: &[u8],
    origin: &str,
) -> Result<(Vec<NamedTensor>, HashMap<String, String>)> {
    let invalid =
        |e: &dyn std::fmt::Display| anyhow!("{origin}: not a valid safetensors file: {e}");
    // read_metadata checks the header, that the offsets tile the data exactly, and that each
    // tensor's byte length matches its shape and dtype.
    let (header_len, meta) = SafeTensors::read_metadata(bytes).map_err(|e| invalid(&e))?;
    let data = bytes
        .get(8 + header_len..)
        .ok_or_else(|| invalid(&"data section missing"))?;
    let mut out = Vec::new();
    for name in meta.offset_keys() {
        let info = meta
            .info(&name)
            .ok_or_else(|| invalid(&format!("tensor {name:?} has no header entry")))?;
        let (start, end) = info.data_offsets;
        let raw = data
            .get(start..end)
            .ok_or_else(|| invalid(&format!("tensor {name:?} lies outside the file")))?;
        let values = decode(&name, info.dtype, raw, origin)?;
        out.push(NamedTensor {
            name,
            shape: info.shape.clone(),
            data: values,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}

/// Reads and parses a safetensors file (see [`from_bytes`]); errors name the file.
pub fn read(path: &Path) -> Result<(Vec<NamedTensor>, HashMap<String, String>)> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow!("failed to read safetensors file {path:?}: {e}"))?;
    from_bytes(&bytes, &format!("{path:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(xs: &[f32]) -> Vec<u32> {
        xs.iter().map(|x| x.to_bits()).collect()
    }

    fn awkward_values() -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // smallest subnormal
            f32::from_bits(0x807f_ffff),
            f32::MAX,
            f32::MIN,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            f32::from_bits(0x7fc0_1234), // NaN with a payload
            f32::from_bits(0xff80_0001), // signalling NaN, negative
        ];
        let mut rng = crate::tensor::Rng::new(11);
        v.extend((0..50).map(|_| rng.normal() as f32 * 1e3));
        v
    }

    #[test]
    fn f32_round_trip_is_bit_exact_with_metadata() {
        let a = awkward_values();
        let b: Vec<f32> = (0..24).map(|i| i as f32 * 0.1).collect();
        let scalar = [std::f32::consts::PI];
        let meta: HashMap<String, String> = [
            ("format".to_string(), "gdn".to_string()),
            ("config".to_string(), "{\"d\": 64}".to_string()),
        ]
        .into_iter()
        .collect();
        let bytes = to_bytes(
            &[
                ("z.weight", &[a.len()], &a),
                ("a.bias", &[2, 3, 4], &b),
                ("empty", &[0, 5], &[]),
                ("scalar", &[], &scalar),
            ],
            Some(meta.clone()),
        )
        .unwrap();
        let (ts, m) = from_bytes(&bytes, "mem").unwrap();
        assert_eq!(m, meta);
        let names: Vec<&str> = ts.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, vec!["a.bias", "empty", "scalar", "z.weight"]);
        assert_eq!(ts[0].shape, vec![2, 3, 4]);
        assert_eq!(bits(&ts[0].data), bits(&b));
        assert_eq!(ts[1].shape, vec![0, 5]);
        assert!(ts[1].data.is_empty());
        assert_eq!(ts[2].shape, Vec::<usize>::new());
        assert_eq!(bits(&ts[2].data), bits(&scalar));
        assert_eq!(ts[3].shape, vec![a.len()]);
        assert_eq!(bits(&ts[3].data), bits(&a));

        // No metadata → empty map; the output is deterministic.
        let x = to_bytes(&[("x", &[1], &[1.0])], None).unwrap();
        assert!(from_bytes(&x, "mem").unwrap().1.is_empty());
        assert_eq!(x, to_bytes(&[("x", &[1], &[1.0])], None).unwrap());
    }

    #[test]
    fn to_bytes_rejects_bad_input() {
        let e = to_bytes(&[("w", &[2, 2], &[1.0, 2.0, 3.0])], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"w\"") && e.contains("[2, 2]"), "{e}");
        let e = to_bytes(&[("w", &[1], &[1.0]), ("w", &[1], &[2.0])], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = to_bytes(&[("w", &[usize::MAX, 2], &[1.0])], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"w\""), "{e}");
    }

    /// A file with one tensor per (name, dtype, raw little-endian bytes), made by the crate.
    fn hand_built(items: &[(&str, Dtype, usize, Vec<u8>)]) -> Vec<u8> {
        let views: Vec<(&str, TensorView)> = items
            .iter()
            .map(|(n, d, len, b)| (*n, TensorView::new(*d, vec![*len], b).unwrap()))
            .collect();
        safetensors::serialize(views, None).unwrap()
    }

    fn le16(xs: &[u16]) -> Vec<u8> {
        xs.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn half_precision_and_f64_decode_to_known_values() {
        let f16 = [
            0x3c00u16, 0xc000, 0x7bff, 0x0001, 0x03ff, 0x0400, 0x3555, 0x0000, 0x8000, 0x7c00,
            0xfc00, 0x8001,
        ];
        let f16_expect = [
            1.0f32,
            -2.0,
            65504.0,
            1.0 / 16_777_216.0,    // 2^-24
            1023.0 / 16_777_216.0, // largest subnormal
            1.0 / 16_384.0,        // 2^-14
            1365.0 / 4096.0,       // 0x3555 = 1.0101010101b · 2^-2
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            -1.0 / 16_777_216.0,
        ];
        let bf16 = [0x3f80u16, 0xc040, 0x7f80, 0x0001, 0x8000, 0x4049];
        let bf16_expect = [
            1.0f32,
            -3.0,
            f32::INFINITY,
            f32::from_bits(0x0001_0000),
            -0.0,
            3.140_625,
        ];
        let f64s = [1.0f64, -0.1, 1e300, f64::MIN_POSITIVE];
        let f64_expect = [1.0f32, -0.1, f32::INFINITY, 0.0];
        let bytes = hand_built(&[
            ("h", Dtype::F16, f16.len(), le16(&f16)),
            ("hnan", Dtype::F16, 2, le16(&[0x7e00, 0xfd01])),
            ("b", Dtype::BF16, bf16.len(), le16(&bf16)),
            ("bnan", Dtype::BF16, 1, le16(&[0x7fc1])),
            (
                "d",
                Dtype::F64,
                f64s.len(),
                f64s.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
        ]);
        let (ts, _) = from_bytes(&bytes, "mixed.safetensors").unwrap();
        let get = |n: &str| ts.iter().find(|t| t.name == n).unwrap().data.clone();
        assert_eq!(bits(&get("h")), bits(&f16_expect));
        assert_eq!(bits(&get("b")), bits(&bf16_expect));
        assert_eq!(bits(&get("d")), bits(&f64_expect));
        let hn = get("hnan");
        assert!(hn.iter().all(|x| x.is_nan()));
        assert!(hn[0].is_sign_positive() && hn[1].is_sign_negative());
        assert!(get("bnan")[0].is_nan());
        // Every finite f16 decodes to the value its fields describe.
        for h in 0..=u16::MAX {
            let exp = (h >> 10) & 0x1f;
            if exp == 0x1f {
                continue;
            }
            let mant = (h & 0x3ff) as f64;
            let mag = if exp == 0 {
                mant * 2f64.powi(-24)
            } else {
                (1.0 + mant / 1024.0) * 2f64.powi(exp as i32 - 15)
            };
            let v = if h & 0x8000 != 0 { -mag } else { mag };
            assert_eq!(f16_to_f32(h) as f64, v, "{h:#06x}");
        }
    }

    #[test]
    fn unsupported_dtype_names_tensor_and_dtype() {
        let bytes = hand_built(&[("ids", Dtype::I32, 2, vec![1, 0, 0, 0, 2, 0, 0, 0])]);
        let e = from_bytes(&bytes, "tok.safetensors")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tok.safetensors") && e.contains("\"ids\"") && e.contains("I32"),
            "{e}"
        );
    }

    #[test]
    fn truncated_and_garbage_input_are_errors() {
        let good = to_bytes(&[("w", &[3], &[1.0, 2.0, 3.0])], None).unwrap();
        for cut in [0, 4, 8, 20, good.len() - 1] {
            let e = from_bytes(&good[..cut], "m.safetensors")
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("m.safetensors: not a valid safetensors file: "),
                "{e}"
            );
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(from_bytes(&longer, "m").is_err());
        let garbage = b"this is certainly not a safetensors file, it is just text".to_vec();
        let e = from_bytes(&garbage, "g").unwrap_err().to_string();
        assert!(e.starts_with("g: not a valid safetensors file: "), "{e}");
        // A plausible length prefix followed by non-JSON.
        let mut fake = 16u64.to_le_bytes().to_vec();
        fake.extend_from_slice(b"{not json at all");
        let e = from_bytes(&fake, "f").unwrap_err().to_string();
        assert!(e.starts_with("f: not a valid safetensors file: "), "{e}");
    }

    #[test]
    fn read_names_the_file() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("gdn-st-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("model.safetensors");
        let good = to_bytes(&[("w", &[2], &[0.5, -0.25])], None).unwrap();
        std::fs::write(&p, &good).unwrap();
        let (ts, _) = read(&p).unwrap();
        assert_eq!(ts[0].data, vec![0.5, -0.25]);

        std::fs::write(&p, &good[..good.len() - 3]).unwrap();
        let e = read(&p).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("not a valid safetensors file"),
            "{e}"
        );
        let e = read(&dir.join("absent.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("failed to read safetensors file") && e.contains("absent.safetensors"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

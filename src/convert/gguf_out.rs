//! A streaming GGUF writer: the header (metadata and every tensor's name, shape, type and
//! offset) first, then the tensors one after another, in pieces.
//!
//! Why not candle's `gguf_file::write`: it takes every tensor at once, so a merged 7B model
//! would sit whole in memory (≈ 4 GB at q4_k_m, 14 GB at f16) before the first byte is written.
//! A tensor's size follows from its shape and type alone, so the header can be written before
//! any data exists, and each tensor can be produced, written and dropped in row chunks.
//!
//! Format (GGUF v3, as llama.cpp's `gguf.cpp` reads it): magic `GGUF`, version, tensor count,
//! key/value count; the key/value pairs; the tensor infos (name, dimension count, dimensions
//! innermost first, type, offset into the data section); zero padding to the alignment; the
//! data, each tensor padded to the alignment. Little-endian throughout.

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use std::io::{self, Write};

/// The data alignment when the metadata names none (`general.alignment`).
pub const DEFAULT_ALIGNMENT: usize = 32;

/// One tensor to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct Planned {
    /// The tensor's GGUF name.
    pub name: String,
    /// Dimensions, outermost first (candle's order: `[rows, cols]`).
    pub dims: Vec<usize>,
    /// Its type in the file.
    pub dtype: GgmlDType,
}

impl Planned {
    /// Bytes of data.
    pub fn bytes(&self) -> usize {
        let elems: usize = self.dims.iter().product();
        elems / self.dtype.block_size() * self.dtype.type_size()
    }
}

/// The type code GGUF stores for a ggml type (`ggml_type` in ggml.h).
pub fn type_code(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// Writes one GGUF file: [`GgufWriter::start`] writes the header; then each planned tensor's
/// bytes in order through [`GgufWriter::write`] and [`GgufWriter::end_tensor`].
pub struct GgufWriter<W: Write> {
    w: W,
    alignment: usize,
    planned: Vec<Planned>,
    /// The tensor being written, and how many of its bytes are written.
    current: usize,
    written: usize,
}

impl<W: Write> GgufWriter<W> {
    /// Write the header for `metadata` (in the order given) and `tensors`.
    pub fn start(
        mut w: W,
        metadata: &[(String, Value)],
        tensors: Vec<Planned>,
        alignment: usize,
    ) -> io::Result<GgufWriter<W>> {
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&value_code(value)?.to_le_bytes());
            put_value(&mut head, value)?;
        }
        let mut offset = 0usize;
        for t in &tensors {
            if t.dims.iter().product::<usize>() % t.dtype.block_size() != 0 {
                return Err(io::Error::other(format!(
                    "tensor {}: {:?} does not divide into {:?} blocks",
                    t.name, t.dims, t.dtype
                )));
            }
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in t.dims.iter().rev() {
                head.extend_from_slice(&(*d as u64).to_le_bytes());
            }
            head.extend_from_slice(&type_code(t.dtype).to_le_bytes());
            head.extend_from_slice(&(offset as u64).to_le_bytes());
            offset += t.bytes().next_multiple_of(alignment);
        }
        let pad = head.len().next_multiple_of(alignment) - head.len();
        head.resize(head.len() + pad, 0);
        w.write_all(&head)?;
        Ok(GgufWriter {
            w,
            alignment,
            planned: tensors,
            current: 0,
            written: 0,
        })
    }

    /// The tensor whose bytes are expected next, if any.
    pub fn next_tensor(&self) -> Option<&Planned> {
        self.planned.get(self.current)
    }

    /// Append bytes of the current tensor.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let Some(t) = self.planned.get(self.current) else {
            return Err(io::Error::other("every planned tensor is already written"));
        };
        if self.written + bytes.len() > t.bytes() {
            return Err(io::Error::other(format!(
                "tensor {}: more than its {} bytes",
                t.name,
                t.bytes()
            )));
        }
        self.w.write_all(bytes)?;
        self.written += bytes.len();
        Ok(())
    }

    /// The current tensor is complete: pad it and move to the next.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let t = &self.planned[self.current];
        if self.written != t.bytes() {
            return Err(io::Error::other(format!(
                "tensor {}: {} of its {} bytes written",
                t.name,
                self.written,
                t.bytes()
            )));
        }
        let pad = self.written.next_multiple_of(self.alignment) - self.written;
        self.w.write_all(&vec![0u8; pad])?;
        self.current += 1;
        self.written = 0;
        Ok(())
    }

    /// Every tensor written: flush and hand back the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if self.current != self.planned.len() {
            return Err(io::Error::other(format!(
                "{} of {} tensors written",
                self.current,
                self.planned.len()
            )));
        }
        self.w.flush()?;
        Ok(self.w)
    }
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `gguf_type` codes of metadata values.
fn value_code(v: &Value) -> io::Result<u32> {
    Ok(match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    })
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            // An empty array's element type is lost on reading; u32 reads back the same.
            let code = match items.first() {
                Some(first) => value_code(first)?,
                None => 4,
            };
            for item in items {
                if value_code(item)? != code {
                    return Err(io::Error::other("a GGUF array mixes value types"));
                }
            }
            out.extend_from_slice(&code.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;
    use candle_core::{Device, Tensor};

    #[test]
    fn candle_reads_back_what_we_stream() {
        let meta = vec![
            (
                "general.architecture".to_string(),
                Value::String("llama".into()),
            ),
            ("x.count".to_string(), Value::U32(7)),
            (
                "x.list".to_string(),
                Value::Array(vec![Value::String("a".into()), Value::String("bc".into())]),
            ),
            ("x.f".to_string(), Value::F32(0.5)),
        ];
        let a: Vec<f32> = (0..64 * 3).map(|i| i as f32 * 0.25).collect();
        let b: Vec<f32> = (0..5).map(|i| -(i as f32)).collect();
        let plan = vec![
            Planned {
                name: "w".into(),
                dims: vec![3, 64],
                dtype: GgmlDType::F32,
            },
            Planned {
                name: "n".into(),
                dims: vec![5],
                dtype: GgmlDType::F32,
            },
        ];
        let mut g = GgufWriter::start(Vec::new(), &meta, plan, DEFAULT_ALIGNMENT).unwrap();
        let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let ab = bytes(&a);
        g.write(&ab[..100]).unwrap();
        g.write(&ab[100..]).unwrap();
        assert!(g.write(&[0]).is_err(), "more than the tensor's bytes");
        g.end_tensor().unwrap();
        g.write(&bytes(&b)).unwrap();
        g.end_tensor().unwrap();
        let file = g.finish().unwrap();

        let mut r = std::io::Cursor::new(&file);
        let ct = Content::read(&mut r).unwrap();
        assert_eq!(ct.metadata["x.count"].to_u32().unwrap(), 7);
        assert_eq!(ct.metadata["x.f"].to_f32().unwrap(), 0.5);
        let w = ct.tensor(&mut r, "w", &Device::Cpu).unwrap();
        let w = w.dequantize(&Device::Cpu).unwrap();
        assert_eq!(w.dims(), &[3, 64]);
        let want = Tensor::from_vec(a, (3, 64), &Device::Cpu).unwrap();
        assert_eq!(
            w.sub(&want)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        let n = ct
            .tensor(&mut r, "n", &Device::Cpu)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        assert_eq!(n.to_vec1::<f32>().unwrap(), b);
    }

    #[test]
    fn a_short_tensor_or_a_missing_one_is_an_error() {
        let plan = vec![Planned {
            name: "w".into(),
            dims: vec![2, 32],
            dtype: GgmlDType::F32,
        }];
        let mut g = GgufWriter::start(Vec::new(), &[], plan.clone(), 32).unwrap();
        g.write(&[0; 8]).unwrap();
        assert!(g.end_tensor().is_err());
        let g = GgufWriter::start(Vec::new(), &[], plan, 32).unwrap();
        assert!(g.finish().is_err());
    }
}

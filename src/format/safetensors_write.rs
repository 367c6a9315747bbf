//! Streaming safetensors writer for f32 tensors: the header, then each tensor's values written
//! straight from the caller's slices, so saving a checkpoint (parameters plus two AdamW
//! moments) holds no second copy of them in memory — the save would otherwise set the run's
//! peak RSS.
//!
//! Layout (the safetensors spec): u64 LE header length N, N bytes of JSON
//! `{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}}` padded with spaces
//! to a multiple of 8, then the data, tensors back to back in the order given.

use std::io::{self, Write};

/// One tensor to write: its name, shape, and its values as consecutive pieces (a flattened
/// view of several buffers needs no concatenated copy).
pub struct F32Tensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub pieces: Vec<&'a [f32]>,
}

impl F32Tensor<'_> {
    fn len(&self) -> usize {
        self.pieces.iter().map(|p| p.len()).sum()
    }
}

/// Write `tensors` as a safetensors file to `w`. Errors if a shape disagrees with its values.
pub fn write_f32_safetensors(w: &mut impl Write, tensors: &[F32Tensor]) -> io::Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for t in tensors {
        let n = t.len();
        if t.shape.iter().product::<usize>() != n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tensor {}: shape {:?} but {n} values", t.name, t.shape),
            ));
        }
        header.insert(
            t.name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": t.shape,
                "data_offsets": [offset, offset + 4 * n],
            }),
        );
        offset += 4 * n;
    }
    let mut text = serde_json::Value::Object(header).to_string().into_bytes();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    w.write_all(&(text.len() as u64).to_le_bytes())?;
    w.write_all(&text)?;
    let mut buf = [0u8; 4096];
    for t in tensors {
        for piece in &t.pieces {
            for chunk in piece.chunks(buf.len() / 4) {
                for (b, v) in buf.chunks_exact_mut(4).zip(chunk) {
                    b.copy_from_slice(&v.to_le_bytes());
                }
                w.write_all(&buf[..4 * chunk.len()])?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    /// The safetensors crate reads back what we write: names, shapes, values, pieces joined.
    #[test]
    fn safetensors_crate_reads_it_back() {
        let a: Vec<f32> = (0..6).map(|i| i as f32 * 0.5 - 1.0).collect();
        let b1 = [1.5f32, -2.0];
        let b2 = [f32::MAX, f32::MIN_POSITIVE, 7.0];
        let tensors = [
            F32Tensor {
                name: "a".into(),
                shape: vec![2, 3],
                pieces: vec![&a],
            },
            F32Tensor {
                name: "b".into(),
                shape: vec![5],
                pieces: vec![&b1, &b2],
            },
            F32Tensor {
                name: "empty".into(),
                shape: vec![0],
                pieces: vec![],
            },
        ];
        let mut out = Vec::new();
        write_f32_safetensors(&mut out, &tensors).unwrap();
        let st = SafeTensors::deserialize(&out).unwrap();
        let get = |n: &str| -> (Vec<usize>, Vec<f32>) {
            let v = st.tensor(n).unwrap();
            let vals = v
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (v.shape().to_vec(), vals)
        };
        assert_eq!(get("a"), (vec![2, 3], a.clone()));
        assert_eq!(get("b"), (vec![5], [&b1[..], &b2[..]].concat()));
        assert_eq!(get("empty").0, vec![0]);
        let bad = [F32Tensor {
            name: "x".into(),
            shape: vec![4],
            pieces: vec![&b1],
        }];
        assert!(write_f32_safetensors(&mut Vec::new(), &bad).is_err());
    }
}

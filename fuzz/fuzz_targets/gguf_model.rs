//! GGUF model reader: header, metadata, tensor table, config, then the whole model load (the
//! first layer's tensors and beyond) and one dequantized row of every matrix.
#![no_main]

use edge_sft::format::gguf::GgufFile;
use edge_sft::model::load::load_gguf_file;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = GgufFile::from_bytes(Path::new("fuzz.gguf"), data) else {
        return;
    };
    for t in &g.tensors {
        let _ = g.tensor_bytes(t);
    }
    let Ok((model, _g)) = load_gguf_file(g) else {
        return;
    };
    let mut row = vec![0f32; model.config.d_model.max(model.config.ffn_dim)];
    let layer = &model.layers[0];
    for m in [
        &layer.wq,
        &layer.wk,
        &layer.wv,
        &layer.wo,
        &layer.w_gate,
        &layer.w_up,
        &layer.w_down,
    ] {
        if m.rows > 0 && m.cols <= row.len() {
            m.dequantize_row(0, &mut row[..m.cols]);
        }
    }
});

//! A model-supplied chat template: compiled, then rendered for a short conversation with and
//! without the generation prompt. Rendering is bounded (fuel, recursion limit, a big-stack render
//! thread for deeply nested values: see chat.rs).
#![no_main]

use edge_sft::tokenize::chat::{ChatTemplate, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(t) = ChatTemplate::new(src, Some("<s>"), Some("</s>")) else {
        return;
    };
    let msgs = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi {{ there }}"),
        Message::new("assistant", "Hello."),
        Message::new("user", "More?"),
    ];
    let _ = t.render(&msgs, true);
    let _ = t.render(&msgs[..3], false);
});

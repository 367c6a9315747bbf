#!/usr/bin/env python3
"""Write the committed seed corpora (fuzz/corpus/<target>/seed-*) from the tiny fixtures under
tests/golden/tiny, cut down to a few KB each, and from hand-made bad inputs.
Run from the repository root: python3 fuzz/make_seeds.py"""
import json, os, struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests/golden/tiny")
OUT = os.path.join(ROOT, "fuzz/corpus")

def seed(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())

# ---- GGUF parsing and writing (v3, little-endian) ----
FIXED = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

def read_gguf(path):
    b = open(path, "rb").read()
    pos = 24
    n_t, n_kv = struct.unpack_from("<QQ", b, 8)
    def s():
        nonlocal pos
        (n,) = struct.unpack_from("<Q", b, pos); pos += 8
        v = b[pos:pos + n]; pos += n
        return v
    def val(ty):
        nonlocal pos
        if ty in FIXED:
            v = struct.unpack_from(FIXED[ty], b, pos)[0]; pos += struct.calcsize(FIXED[ty]); return v
        if ty == 8: return s()
        et, n = struct.unpack_from("<IQ", b, pos); pos += 12
        return (et, [val(et) for _ in range(n)])
    kv = []
    for _ in range(n_kv):
        k = s(); (ty,) = struct.unpack_from("<I", b, pos); pos += 4
        kv.append((k.decode(), ty, val(ty)))
    tensors = []
    for _ in range(n_t):
        name = s().decode(); (nd,) = struct.unpack_from("<I", b, pos); pos += 4
        dims = struct.unpack_from("<%dQ" % nd, b, pos); pos += 8 * nd
        ty, off = struct.unpack_from("<IQ", b, pos); pos += 12
        tensors.append([name, dims, ty, off])
    data_off = (pos + 31) // 32 * 32
    ends = sorted(t[3] for t in tensors) + [len(b) - data_off]
    for t in tensors:
        nxt = min(e for e in ends if e > t[3])
        t.append(b[data_off + t[3]: data_off + nxt])
    return kv, tensors

def write_gguf(kv, tensors):
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    def s(x):
        x = x if isinstance(x, bytes) else x.encode()
        out.extend(struct.pack("<Q", len(x)) + x)
    def val(ty, v):
        if ty in FIXED: out.extend(struct.pack(FIXED[ty], v))
        elif ty == 8: s(v)
        else:
            et, items = v
            out.extend(struct.pack("<IQ", et, len(items)))
            for i in items: val(et, i)
    for k, ty, v in kv:
        s(k); out.extend(struct.pack("<I", ty)); val(ty, v)
    off = 0
    for name, dims, ty, _, data in tensors:
        s(name); out.extend(struct.pack("<I", len(dims)) + struct.pack("<%dQ" % len(dims), *dims))
        out.extend(struct.pack("<IQ", ty, off)); off += (len(data) + 31) // 32 * 32
    out.extend(b"\0" * (-len(out) % 32))
    for t in tensors:
        d = t[4]; out.extend(d + b"\0" * (-len(d) % 32))
    return bytes(out)

kv, tensors = read_gguf(os.path.join(TINY, "llama/q4_0.gguf"))
# Model: one layer, tied embeddings (no output.weight).
kv1 = [(k, ty, 1 if k.endswith(".block_count") else v) for k, ty, v in kv]
t1 = [t for t in tensors if not t[0].startswith("blk.1.") and t[0] != "output.weight"]
seed("gguf_model", "tiny-llama-1layer-q4_0", write_gguf(kv1, t1))
seed("gguf_model", "header-only", write_gguf([], []))
seed("gguf_model", "lying-tensor-count", b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0) + b"\0" * 40)
# Vocabulary: metadata only.
seed("gguf_vocab", "tiny-llama-metadata", write_gguf(kv, []))
qkv, _ = read_gguf(os.path.join(TINY, "qwen2/q4_0.gguf"))
seed("gguf_vocab", "tiny-qwen2-metadata", write_gguf(qkv, []))
# Chat templates: the tiny models' own, ChatML, and a few hostile ones.
for name, m in [("llama", kv), ("qwen2", qkv)]:
    for k, ty, v in m:
        if k == "tokenizer.chat_template":
            seed("chat_template", name, v)
seed("chat_template", "chatml", "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
seed("chat_template", "nested-loops", "{% for i in range(100000) %}{% for j in range(100000) %}{{ i }}{% endfor %}{% endfor %}")
seed("chat_template", "recursive-macro", "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")
seed("chat_template", "namespace", "{% set ns = namespace(s='ab') %}{% for m in messages %}{% set ns.s = ns.s ~ m.content %}{% endfor %}{{ ns.s | tojson }}{{ raise_exception('x') if not messages }}")
# GGUF adapter: the first q pair of a real-shaped adapter (F32, rank 2).
d = 32
lora_kv = [("general.architecture", 8, "llama"), ("general.type", 8, "adapter"),
           ("adapter.type", 8, "lora"), ("adapter.lora.alpha", 6, 4.0)]
a = struct.pack("<%df" % (2 * d), *[0.01 * i for i in range(2 * d)])
bq = struct.pack("<%df" % (2 * d), *[-0.01 * i for i in range(2 * d)])
seed("gguf_adapter", "q-pair-f32", write_gguf(lora_kv, [
    ["blk.0.attn_q.weight.lora_a", (d, 2), 0, 0, a],
    ["blk.0.attn_q.weight.lora_b", (2, d), 0, 0, bq]]))
seed("gguf_adapter", "metadata-only", write_gguf(lora_kv, []))

# ---- safetensors ----
def safetensors(tensors):
    hdr, blob = {}, bytearray()
    for name, dtype, shape, data in tensors:
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob.extend(data)
    h = json.dumps(hdr).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + bytes(blob)

def f32(n, k=0.01):
    return struct.pack("<%df" % n, *[k * ((i * 7) % 13 - 6) for i in range(n)])

SEP = b"\n#SAFETENSORS#\n"
cfg = json.load(open(os.path.join(TINY, "llama/peft_adapter/adapter_config.json")))
small_cfg = {k: cfg[k] for k in ["r", "lora_alpha", "peft_type", "target_modules", "use_rslora"] if k in cfg}
r = cfg["r"]
peft = safetensors([
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", "F32", [r, d], f32(r * d)),
    ("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", "F32", [d, r], f32(d * r)),
])
seed("peft_adapter", "q-pair", json.dumps(small_cfg).encode() + SEP + peft)
seed("peft_adapter", "lying-header", json.dumps(small_cfg).encode() + SEP + struct.pack("<Q", 1 << 60) + b"{}")

# HF folder: a micro Llama config and matching BF16 weights (F32 here: any float dtype works).
hcfg = {"model_type": "llama", "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 4, "intermediate_size": 16, "num_hidden_layers": 1, "vocab_size": 16,
        "max_position_embeddings": 64, "tie_word_embeddings": True, "rms_norm_eps": 1e-6}
L = "model.layers.0."
hf = safetensors([
    ("model.embed_tokens.weight", "F32", [16, 8], f32(128)),
    ("model.norm.weight", "F32", [8], f32(8, 0.1)),
    (L + "input_layernorm.weight", "F32", [8], f32(8, 0.1)),
    (L + "post_attention_layernorm.weight", "F32", [8], f32(8, 0.1)),
    (L + "self_attn.q_proj.weight", "F32", [8, 8], f32(64)),
    (L + "self_attn.k_proj.weight", "F32", [4, 8], f32(32)),
    (L + "self_attn.v_proj.weight", "F32", [4, 8], f32(32)),
    (L + "self_attn.o_proj.weight", "F32", [8, 8], f32(64)),
    (L + "mlp.gate_proj.weight", "F32", [16, 8], f32(128)),
    (L + "mlp.up_proj.weight", "F32", [16, 8], f32(128)),
    (L + "mlp.down_proj.weight", "F32", [8, 16], f32(128)),
])
seed("hf_dir", "micro-llama", json.dumps(hcfg).encode() + SEP + hf)
seed("hf_dir", "lying-header", json.dumps(hcfg).encode() + SEP + struct.pack("<Q", 1 << 60) + b"{}")

# JSONL: the tiny records, and bad lines.
seed("jsonl_records", "tiny-records", open(os.path.join(TINY, "records.jsonl"), "rb").read()[:3000])
seed("jsonl_records", "bad-lines", b'{"prompt": "a"}\n\xff\xfe\n{"messages": []}\n[1,2]\n{"messages": [{"role": "assistant", "content": "x"}]}\n\n\n')

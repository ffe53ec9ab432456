#!/usr/bin/env python3
"""A random-weight Llama (12 layers, hidden 768, 85 M parameters, 315 MB in fp32) with the demo
teacher's tokenizer: large enough that copies of the teacher show in a job's peak memory
(BENCHMARKS.md, teacher memory). Pure Python, no numpy: the weights are one random block tiled.

    python3 bench/random_llama.py out/bigteacher     # from the repository root
"""
import array, json, os, random, shutil, struct, sys
out = sys.argv[1]
hidden, inter, layers, heads, kv, vocab = 768, 2048, 12, 12, 4, 4096
hd = hidden // heads
cfg = json.load(open("models/demo-teacher/config.json"))
cfg.update(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
           num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd, torch_dtype="float32")
cfg.pop("dtype", None)
os.makedirs(out, exist_ok=True)
json.dump(cfg, open(f"{out}/config.json", "w"), indent=2)
shutil.copy("models/demo-teacher/tokenizer.json", out)
rng = random.Random(0)
block = array.array("f", [rng.gauss(0, 0.02) for _ in range(1 << 16)])
shapes = {"model.embed_tokens.weight": [vocab, hidden], "model.norm.weight": [hidden]}
for l in range(layers):
    p = f"model.layers.{l}."
    shapes.update({p + "self_attn.q_proj.weight": [heads * hd, hidden],
                   p + "self_attn.k_proj.weight": [kv * hd, hidden],
                   p + "self_attn.v_proj.weight": [kv * hd, hidden],
                   p + "self_attn.o_proj.weight": [hidden, heads * hd],
                   p + "mlp.gate_proj.weight": [inter, hidden], p + "mlp.up_proj.weight": [inter, hidden],
                   p + "mlp.down_proj.weight": [hidden, inter],
                   p + "input_layernorm.weight": [hidden], p + "post_attention_layernorm.weight": [hidden]})
header, offset = {}, 0
for name, shape in shapes.items():
    n = 1
    for d in shape:
        n *= d
    header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + 4 * n]}
    offset += 4 * n
h = json.dumps(header).encode()
h += b" " * (-len(h) % 8)
with open(f"{out}/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for name, shape in shapes.items():
        n = 1
        for d in shape:
            n *= d
        if name.endswith("norm.weight"):
            array.array("f", [1.0] * n).tofile(f)
            continue
        full, rest = divmod(n, len(block))
        for _ in range(full):
            block.tofile(f)
        block[:rest].tofile(f)
print(out, offset / 1e6, "MB")

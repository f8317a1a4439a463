"""PyTorch + PEFT LoRA training steps on a randomly initialised model of a given shape: the
anchor that `benches/train_vs_peft.rs` runs beside ours. Prints one JSON line."""
import argparse, json, resource, time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM

p = argparse.ArgumentParser()
p.add_argument("--shape", required=True)
p.add_argument("--batch", type=int, default=4)
p.add_argument("--len", type=int, default=256)
p.add_argument("--steps", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
s = json.loads(a.shape)
torch.set_num_threads(a.threads)
torch.manual_seed(0)
kind = {"llama": "llama", "qwen2": "qwen2"}[s["arch"]]
cfg = AutoConfig.for_model(
    kind,
    hidden_size=s["hidden"],
    num_hidden_layers=s["layers"],
    num_attention_heads=s["heads"],
    num_key_value_heads=s["kv_heads"],
    intermediate_size=s["intermediate"],
    vocab_size=s["vocab"],
    tie_word_embeddings=s["tied"],
    max_position_embeddings=max(2048, a.len),
)
cfg._attn_implementation = "sdpa"
model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
lora = LoraConfig(
    r=16,
    lora_alpha=16,
    lora_dropout=0.0,
    target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    task_type="CAUSAL_LM",
)
model = get_peft_model(model, lora)
model.train()
opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=2e-4)
ids = torch.randint(0, s["vocab"], (a.batch, a.len))
times = []
for i in range(a.steps + 2):
    t = time.perf_counter()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad()
    if i >= 2:
        times.append(time.perf_counter() - t)
times.sort()
med = times[len(times) // 2]
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"tokens_per_s": a.batch * a.len / med, "step_s": med, "peak_rss_mb": rss}))

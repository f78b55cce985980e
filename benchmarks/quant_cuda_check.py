"""Device check for quantized weights on CUDA (issue 16): a tiny Llama written by Transformers, loaded
quantized (int8, nf4, int4) straight onto the GPU and on the CPU; the logits on both devices must agree,
and a short greedy decode must give the same tokens. Prints one line per method; exits 1 on a mismatch."""

import sys
import tempfile

import torch
import transformers

from pretrained import AutoModelForCausalLM, BitsAndBytesConfig, Int4Config

assert torch.cuda.is_available(), "needs a CUDA device"
folder = tempfile.mkdtemp()
torch.manual_seed(0)
config = transformers.LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
transformers.LlamaForCausalLM(config).save_pretrained(folder)
ids = torch.randint(3, 512, (2, 16), generator=torch.Generator().manual_seed(1))
methods = {"int8": BitsAndBytesConfig(load_in_8bit=True), "nf4": BitsAndBytesConfig(load_in_4bit=True),
           "int4": Int4Config(group_size=64)}
failed = 0
for name, qc in methods.items():
    cpu = AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc, dtype=torch.bfloat16)
    gpu = AutoModelForCausalLM.from_pretrained(folder, quantization_config=qc, dtype=torch.bfloat16, device_map="cuda")
    with torch.no_grad():
        a = cpu(ids).logits.float()
        b = gpu(ids.cuda()).logits.float().cpu()
    cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
    ta = cpu.generate(ids, max_new_tokens=8, do_sample=False)
    tb = gpu.generate(ids.cuda(), max_new_tokens=8, do_sample=False).cpu()
    same = float((ta == tb).float().mean())
    ok = cos > 0.999 and same > 0.9
    failed += not ok
    print(f"{name}: device={next(gpu.parameters()).device} cosine(cpu, cuda logits)={cos:.6f} "
          f"token agreement={same:.3f} footprint={gpu.get_memory_footprint()} {'ok' if ok else 'MISMATCH'}")
sys.exit(1 if failed else 0)

"""Loads a checkpoint written by tpo-engine training with transformers, unchanged, and checks
that the summed completion log-probs it computes for a prompt/completion JSONL file equal the
ones `tpo-engine logprobs` wrote. Run by scripts/check-checkpoint.sh.

    check_checkpoint_hf.py MODEL_DIR INPUT.jsonl OURS.jsonl

The completion is scored as tpo-engine trains it: the prompt rendered through the chat
template (with the assistant header), the completion tokenized on its own and followed by the
tokenizer's EOS token.
"""

import json
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    model_dir, input_path, ours_path = sys.argv[1:4]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    stored = {p.dtype for p in model.parameters()}
    with open(f"{model_dir}/config.json") as f:
        config = json.load(f)
    config_dtype = config.get("dtype") or config.get("torch_dtype")
    model = model.float().eval()
    lines = [json.loads(l) for l in open(input_path) if l.strip()]
    ours = [json.loads(l) for l in open(ours_path) if l.strip()]
    assert len(lines) == len(ours), "one output line per input line"
    worst = 0.0
    for example, mine in zip(lines, ours):
        text = tok.apply_chat_template([{"role": "user", "content": example["prompt"]}],
                                       add_generation_prompt=True, tokenize=False)
        prompt = tok(text, add_special_tokens=False).input_ids
        completion = tok(example["completion"], add_special_tokens=False).input_ids
        completion.append(tok.eos_token_id)
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
        targets = ids[0, len(prompt):]
        total = logp[len(prompt) - 1 : -1].gather(1, targets[:, None]).sum().item()
        assert mine["n_tokens"] == len(completion), (mine["n_tokens"], len(completion))
        err = abs(total - mine["sum_logprob"])
        assert err <= 1e-3 * max(1.0, abs(total)), f"log-prob {mine['sum_logprob']} vs transformers {total}"
        worst = max(worst, err)
    print(f"{model_dir}: loads in transformers (weights {sorted(map(str, stored))}, config dtype "
          f"{config_dtype}); {len(lines)} completion log-probs agree, largest difference {worst:.2e}")


if __name__ == "__main__":
    main()

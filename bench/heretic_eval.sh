#!/usr/bin/env bash
# Heretic 1.4.0's own scoring (`heretic --evaluate-model`) on the prompts, model and settings that
# bench/score.py uses, timed per part. Heretic (AGPL-3.0) is only installed and run here, in its
# own virtualenv; nothing of it is copied into this project.
#
#   bash bench/heretic_eval.sh [BASE_MODEL_DIR] [EVALUATED_MODEL_DIR]
#
# Defaults: the fp32 Hugging Face folder of the real model, evaluated against itself. Make it with
#   python3 -c "from ablation import load_model, export_checkpoint; export_checkpoint(load_model(
#     'bench/.models/qwen2.5-coder-0.5b-instruct.gguf', dtype='fp32', device='cpu'),
#     'bench/.models/qwen2.5-coder-0.5b-instruct')"
# Output: Heretic's log, "[timing]" lines per part, and responses-N.json (responses + verdicts).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=$(realpath "${1:-bench/.models/qwen2.5-coder-0.5b-instruct}")
EVAL=$(realpath "${2:-$BASE}")
VENV=${HERETIC_VENV:-/tmp/heretic-venv}
WORK=${HERETIC_WORK:-/tmp/heretic-eval}
mkdir -p "$WORK"

# 1. Heretic in a separate venv that sees the system torch (CPU) and transformers. pip pulls an
#    older transformers (5.22.2) into the venv; removing it makes both tools run 5.23.0.
if [ ! -x "$VENV/bin/heretic" ]; then
  python3 -m venv --system-site-packages "$VENV"
  "$VENV/bin/pip" install -q heretic-llm==1.4.0
  "$VENV/bin/pip" uninstall -q -y transformers
fi

# 2. The same 100 + 100 prompts bench/score.py resolves, one per line (none contains a newline).
python3 - "$WORK" <<'EOF'
import sys
from objectives.prompts import load_prompts
for name, spec in (("harmful", "jailbreakbench[0:100]"), ("harmless", "rho-benign[0:100]")):
    prompts = load_prompts(spec)
    assert not any("\n" in p for p in prompts)
    open(f"{sys.argv[1]}/{name}.txt", "w", encoding="utf-8").write("\n".join(prompts) + "\n")
EOF

# 3. Settings matched to score.py: fp32 on the CPU, batch 16, 100 new tokens, greedy. The system
#    prompt is the one Qwen2.5's template inserts when none is given (score.py gives none), so
#    both tools feed identical token sequences. response_prefix = "" skips Heretic's one-off
#    common-prefix probe (200 extra generations); the extraction sets are only read in this mode.
cat > "$WORK/config.toml" <<EOF
model = "$BASE"
dtypes = ["float32"]
device_map = "cpu"
batch_size = 16
max_response_length = 100
response_prefix = ""
seed = 0
system_prompt = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
study_checkpoint_dir = "$WORK/checkpoints"
[good_prompts]
dataset = "$WORK/harmless.txt"
[bad_prompts]
dataset = "$WORK/harmful.txt"
[good_evaluation_prompts]
dataset = "$WORK/harmless.txt"
[bad_evaluation_prompts]
dataset = "$WORK/harmful.txt"
EOF

# 4. Timing hooks around Heretic's own methods (it prints no timings itself), then its CLI entry.
cat > "$WORK/timed_heretic.py" <<'EOF'
import functools, json, time
from heretic.evaluator import Evaluator
from heretic.main import main
from heretic.model import Model

tally = {"tokens": 0, "positions": 0}
def timed(cls, name, label):
    original = getattr(cls, name)
    @functools.wraps(original)
    def wrapper(*args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        result = original(*args, **kwargs)
        print(f"[timing] {label}: {time.perf_counter() - start:.1f} s wall, "
              f"{time.process_time() - cpu:.1f} s CPU", flush=True)
        return result
    setattr(cls, name, wrapper)

generate = Model.generate
def counting_generate(self, prompts, **kwargs):  # count new tokens of long generations
    inputs, outputs = generate(self, prompts, **kwargs)
    if kwargs.get("max_new_tokens", 1) > 1:
        new = outputs[:, inputs["input_ids"].shape[1]:]
        stop = (new == self.tokenizer.eos_token_id) | (new == self.tokenizer.pad_token_id)
        for row in range(new.shape[0]):  # up to and including the first end token
            ends = stop[row].nonzero()
            tally["tokens"] += int(ends[0]) + 1 if len(ends) else new.shape[1]
        tally["positions"] += new.numel()
    return inputs, outputs
Model.generate = counting_generate

batched = Model.get_responses_batched
def keeping_responses(self, prompts, **kwargs):
    self.last_responses = batched(self, prompts, **kwargs)
    return self.last_responses
Model.get_responses_batched = keeping_responses

count_refusals, passes = Evaluator.count_refusals, [0]
def counted_refusals(self):
    tally.update(tokens=0, positions=0)
    refusals = count_refusals(self)
    passes[0] += 1
    responses = self.model.last_responses
    json.dump([{"prompt": p.user, "response": r, "refusal": self.is_refusal(r)} for p, r in zip(self.bad_prompts, responses)],
              open(f"responses-{passes[0]}.json", "w"), indent=1)
    print(f"[timing] refusal pass {passes[0]}: {refusals} refusals, {tally['tokens']} tokens generated "
          f"({tally['positions']} batch positions decoded)", flush=True)
    return refusals
Evaluator.count_refusals = counted_refusals

timed(Model, "__init__", "load model + LoRA")
timed(Model, "get_logprobs_batched", "KL pass (first-token log-probs)")
timed(Evaluator, "count_refusals", "refusal pass")
timed(Evaluator, "__init__", "base scoring (KL + refusal pass on the base)")
timed(Model, "reset_model", "switch to the evaluated model")
timed(Evaluator, "get_score", "get_score (one trial's scoring)")
main()
EOF

# 5. Run offline; KAGGLE_KERNEL_RUN_TYPE makes any menu read plain stdin (none appears here).
#    --model must be on the command line: without it Heretic takes the last argument for the model.
cd "$WORK"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 KAGGLE_KERNEL_RUN_TYPE=1
time "$VENV/bin/python" timed_heretic.py --model "$BASE" --evaluate-model "$EVAL" </dev/null

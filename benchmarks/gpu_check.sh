#!/usr/bin/env bash
# Re-measure the GPU figures of docs/performance.md in one run (under 10 minutes on one GPU).
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]          # OUT_DIR defaults to $OUT, else gpu-figures/
#     QUICK=1 DEVICE=cpu bash benchmarks/gpu_check.sh  # the same plumbing at toy sizes, on a CPU
#
# Writes OUT_DIR/figures.md (the tables, laid out as in docs/performance.md, ready to paste),
# the JSON of every script and each script's full output (*.log). What it runs:
#
#   1. benchmarks/step_throughput.py at the H200 section's size (16 rollouts × (128 + 512)
#      tokens, loss memory at T = 256 … 8192, generation of 256 tokens): every step, memory
#      and generation figure of that section;
#   2. the same script at its default, small size (4 × (32 + 96) tokens): the small-batch line;
#   3. benchmarks/loop_vs_trl.py at its default size on the GPU (needs `pip install trl`;
#      without TRL the step_throughput TRL line and this part are skipped and say so).
#
# The step-profile tables (`step_profile.py`, `distil bench` phase shares) are 2-core CPU
# figures of the CPU machine and are not re-measured here.
set -u -o pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
OUT_DIR="${1:-${OUT:-gpu-figures}}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
export HF_HUB_OFFLINE=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false

if [ "${QUICK:-0}" = 1 ]; then  # toy sizes: checks the plumbing, not the figures
  BIG=(--layers 1 --batch 2 --group 2 --prompt 4 --response 6 --new-tokens 3 --repeats 1 --gen-repeats 1 --memory-lengths 256)
  SMALL=(--layers 1 --batch 2 --group 2 --prompt 4 --response 6 --new-tokens 3 --repeats 1 --gen-repeats 1 --memory-lengths)
  LOOP=(--steps 2 --problems 2 --samples 2 --eval-every 1 --eval-problems 2 --eval-samples 1 --threads 1 --repeats 1)
else
  BIG=(--batch 16 --group 4 --prompt 128 --response 512 --new-tokens 256 --repeats 5 --memory-lengths 256 1024 4096 8192)
  SMALL=(--repeats 5 --memory-lengths)
  LOOP=(--repeats 3 --runs grpo trl-grpo jsd-same-input trl-gkd)  # the like-for-like pairs, 3 times each
fi

has_trl=0
python -c "import trl" 2>/dev/null && has_trl=1
status=0
run() {  # run NAME LIMIT_S CMD...: its output into NAME.log; a failure is noted, the rest still runs
  local name="$1" limit="$2"; shift 2
  echo "== $name" >&2
  if ! timeout "$limit" "$@" >"$OUT_DIR/$name.log" 2>&1; then
    echo "   $name failed or ran past ${limit}s; see $OUT_DIR/$name.log" >&2
    status=1
  fi
}

run step_throughput_large 240 python "$HERE/step_throughput.py" --device "$DEVICE" "${BIG[@]}" --json "$OUT_DIR/step_throughput_large.json"
run step_throughput_small 90 python "$HERE/step_throughput.py" --device "$DEVICE" "${SMALL[@]}" --json "$OUT_DIR/step_throughput_small.json"
if [ "$has_trl" = 1 ]; then
  run loop_vs_trl 240 python "$HERE/loop_vs_trl.py" "${LOOP[@]}" --out "$OUT_DIR/loop_runs" --json "$OUT_DIR/loop_vs_trl.json"
fi

python - "$OUT_DIR" "$has_trl" <<'EOF'
import json, os, sys

out, has_trl = sys.argv[1], sys.argv[2] == "1"
LABELS = {"sft": "sft (response_logits)", "sft_plain": "sft (plain slicing)", "distil": "distil (ours, chunked)",
          "distil_full": "distil, full logits", "trl": "trl gkd (generalized JSD)"}


def load(name):
    path = os.path.join(out, name)
    return json.load(open(path)) if os.path.exists(path) else None


def steps(f, title):
    base = min(f["step_s"]["sft"], f["step_s"]["sft_plain"])
    rows = [f"| {title} | ms | × sft |", "|---|---:|---:|"]
    rows += [f"| {LABELS[k]} | {v * 1000:.1f} | {v / base:.2f} |" for k, v in f["step_s"].items()]
    s = f["step_s"]
    rows.append("")
    rows.append(f"response_logits / plain-slicing SFT = **{s['sft'] / s['sft_plain']:.2f}×** (target ≤ 1.1); "
                f"DistIL / SFT = **{s['distil'] / base:.2f}×** (target ≤ 1.5)"
                + (f"; ours / TRL GKD = **{s['distil'] / s['trl']:.2f}×**" if "trl" in s else "; TRL GKD not measured (no TRL)"))
    return rows


lines = []
big, small = load("step_throughput_large.json"), load("step_throughput_small.json")
if big:
    lines += [f"### step_throughput, {big['batch']} rollouts × ({big['prompt']} + {big['response']}) tokens, {big['device']}", ""]
    lines += steps(big, f"step, {big['batch']} rollouts × ({big['prompt']} + {big['response']}) tokens")
    mem = big.get("loss_memory", {})
    if mem:
        lines += ["", "| T | full logits MB | chunked MB | full / chunked |", "|---:|---:|---:|---:|"]
        lines += [f"| {t} | {m['full_mb']:.0f} | {m['chunked_mb']:.0f} | {m['full_mb'] / max(m['chunked_mb'], 1e-9):.1f}× |"
                  for t, m in mem.items()]
    g = big["generation_tokens_per_s"]
    lines += ["", f"Generation: ours {g['ours']:,.0f} tokens/s, bare `generate` {g['bare_generate']:,.0f} "
                  f"(**{g['ours'] / g['bare_generate']:.2f}×**)", ""]
if small:
    s, base = small["step_s"], min(small["step_s"]["sft"], small["step_s"]["sft_plain"])
    parts = ", ".join(f"{LABELS[k]} {v * 1000:.1f} ms ({v / base:.2f}×)" for k, v in s.items())
    g = small["generation_tokens_per_s"]
    lines += [f"Small batch ({small['batch']} × ({small['prompt']} + {small['response']}) tokens): {parts}; "
              f"generation {g['ours']:,.0f} / {g['bare_generate']:,.0f} tokens/s "
              f"({g['ours'] / g['bare_generate']:.2f}×).", ""]
log = os.path.join(out, "loop_vs_trl.log")
if has_trl and os.path.exists(log):
    text = open(log).read()
    table = text[text.find("| run |"):] if "| run |" in text else "(loop_vs_trl.py printed no table; see its log)"
    lines += ["### loop_vs_trl", "", text.splitlines()[0] if text else "", "", table.strip(), ""]
elif not has_trl:
    lines += ["### loop_vs_trl", "", "not measured: TRL is not installed here (pip install trl)", ""]
with open(os.path.join(out, "figures.md"), "w") as fh:
    fh.write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
exit $status

"""bf16 against fp32 on this CPU: one matrix product of Qwen2.5-0.5B's MLP shape, one thread.

    python bench/dtype_speed.py        (prints and writes bench/agent/dtype_speed.json)

Every search, fair run and model server here loads checkpoints in bf16 unless told otherwise; on
a CPU without bf16 instructions that is many times slower than fp32, which decides whether a bench
is worth running on the machine at hand.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

RECORD = Path(__file__).resolve().parent / "agent" / "dtype_speed.json"
ROWS, HIDDEN, INTERMEDIATE, REPEATS = 960, 896, 4864, 5  # 16 prompts x 60 tokens into the MLP's up-projection


def seconds(dtype: torch.dtype) -> list[float]:
    torch.manual_seed(0)
    x, layer = torch.randn(ROWS, HIDDEN).to(dtype), torch.nn.Linear(HIDDEN, INTERMEDIATE, bias=False).to(dtype)
    out = []
    with torch.inference_mode():
        layer(x)  # warm-up
        for _ in range(REPEATS):
            start = time.perf_counter()
            layer(x)
            out.append(time.perf_counter() - start)
    return out


def main() -> None:
    torch.set_num_threads(1)
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "unknown") if flags else "unknown"
    times = {name: seconds(dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    medians = {name: statistics.median(t) for name, t in times.items()}
    record = {"date": time.strftime("%Y-%m-%d"), "cpu": model, "torch": torch.__version__, "threads": 1,
              "shape": [ROWS, HIDDEN, INTERMEDIATE], "bf16_instructions": sorted(flags & {"avx512_bf16", "amx_bf16"}),
              "median_seconds": medians, "bf16_over_fp32": medians["bf16"] / medians["fp32"], "seconds": times}
    RECORD.parent.mkdir(parents=True, exist_ok=True)
    RECORD.write_text(json.dumps(record, indent=1))
    print(f"{model}; bf16 instructions: {', '.join(record['bf16_instructions']) or 'none'}; one {ROWS}x{HIDDEN}x{INTERMEDIATE} "
          f"product, one thread: fp32 {medians['fp32']:.3f} s, bf16 {medians['bf16']:.3f} s ({record['bf16_over_fp32']:.1f}x)")


if __name__ == "__main__":
    main()

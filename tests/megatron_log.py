"""Read pretrain_gpt.py's iteration lines the way Megatron-LM's log tooling reads its own:
`key: value` fields between `|`, the loss under `lm loss:`."""
import re
from typing import Dict

LINE = re.compile(r"^ \[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] iteration +(\d+)/ *(\d+) \|(.*)$", re.M)


def iteration_fields(stdout: str) -> Dict[int, Dict[str, str]]:
    """iteration -> {field: text} for every iteration line (an iteration logged twice is an error)."""
    out = {}
    for m in LINE.finditer(stdout):
        it = int(m.group(2))
        assert it not in out, f"iteration {it} was logged twice (more than one logging rank?)"
        fields = {"timestamp": m.group(1), "train_iters": m.group(3)}
        for part in m.group(4).split("|"):
            if ":" in part:
                k, v = part.rsplit(":", 1)
                fields[k.strip()] = v.strip()
        out[it] = fields
    return out


def lm_losses(stdout: str) -> Dict[int, float]:
    return {it: float(f["lm loss"]) for it, f in iteration_fields(stdout).items()}

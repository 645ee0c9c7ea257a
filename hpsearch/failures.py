"""Placeholder until the failures module lands (classify_failure)."""
RECURRING = frozenset({"out_of_memory", "nan", "invalid_config"})


def classify_failure(text: str) -> str:
    low = text.lower()
    if "diverged" in low or "nan" in low:
        return "nan"
    if "resourceexhausted" in low or "oom" in low or "memoryerror" in low:
        return "out_of_memory"
    return "error"

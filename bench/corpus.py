"""A fixed, generated English corpus for the benchmarks: the same chunks on every run."""

from __future__ import annotations

import random

_SUBJECTS = [
    "The quarterly report",
    "Our support team",
    "The storage cluster",
    "A new hire",
    "The research group",
    "The city council",
    "This embedding model",
    "The night shift",
    "The finance department",
    "The river survey",
    "Every contractor",
    "The backup job",
    "The museum's archive",
    "A small bakery",
    "The compiler",
]
_VERBS = [
    "describes",
    "reviews",
    "summarises",
    "measures",
    "questions",
    "improves",
    "documents",
    "replaces",
    "depends on",
    "ignores",
    "schedules",
    "compares",
    "rebuilds",
    "predicts",
    "publishes",
]
_OBJECTS = [
    "the migration plan for the old database",
    "customer complaints about late deliveries",
    "energy use across three data centres",
    "the safety rules for the warehouse floor",
    "a proposal to move invoices to the cloud",
    "the history of the harbour since 1850",
    "how rainfall changes the water table",
    "the results of last spring's user study",
    "onboarding steps for remote engineers",
    "the budget for the winter festival",
    "latency spikes in the payment service",
    "a recipe for sourdough with rye flour",
    "the licence terms of third-party libraries",
    "the maintenance log of the city trams",
    "vector search over scanned contracts",
]
_TAILS = [
    "before the end of the month",
    "with help from two volunteers",
    "despite the missing figures",
    "in a short appendix",
    "for the board meeting on Tuesday",
    "using data from 2019 to 2024",
    "after a long discussion",
    "so that auditors can follow it",
    "without any extra cost",
    "while the servers were being upgraded",
]


def sentences(seed: int = 1234) -> list[str]:
    """An endless-enough supply of plain English sentences, deterministic for a seed."""
    rng = random.Random(seed)
    out = []
    for _ in range(20_000):
        out.append(
            f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)} {rng.choice(_TAILS)}."
        )
    return out


def chunks(n: int = 500, size: int = 500, seed: int = 1234) -> list[str]:
    """``n`` chunks of about ``size`` characters, built from whole sentences."""
    out: list[str] = []
    current: list[str] = []
    length = 0
    for sentence in sentences(seed):
        if length + len(sentence) + 1 > size and current:
            out.append(" ".join(current))
            if len(out) == n:
                return out
            current, length = [], 0
        current.append(sentence)
        length += len(sentence) + 1
    raise ValueError(f"corpus too small for {n} chunks")

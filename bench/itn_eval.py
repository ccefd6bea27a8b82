"""Inverse text normalization: exact-match accuracy per category, per-sentence latency and load time of
qasr's ITN, measured in the same run as the libraries it was chosen over (docs/STYLE.md habit 14).

Systems:
- `qasr`: `qasr.text.itn` (WeTextProcessing grammars, qasr's written conventions).
- `wetext`: WeTextProcessing's own `InverseNormalizer` as shipped (zh: its precompiled FST; en: compiled
  here), with its own verbalizer.
- `nemo`: NVIDIA NeMo text processing, English ITN, `input_case="cased"` (optional install).
- `text2num`: `text_to_num.alpha2digit(text, "en")` (optional install).
Every stock candidate is also run `+adapter`: the same minimal wrapping an ASR transcript needs for any
of them (hyphenated "twenty-five" split, the space they put before punctuation removed), so the table
separates "cannot read ASR text" from "writes other conventions".

Data: bench/data/itn_{zh,en}.tsv (category, spoken, expected). Run `python bench/itn_eval.py`
(`--failures` lists every miss of every system; `--quick` skips the candidates).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).with_name("data")
ROUNDS = 3  # latency: passes over the test set after warm-up
FINDINGS = [
    "WeTextProcessing 1.2.0 installs from wheels (pure Python + pynini 2.1.7). pynini publishes wheels for "
    "CPython 3.10-3.13 on manylinux x86_64 only: elsewhere pip builds it from source and needs OpenFst.",
    "nemo_text_processing 1.2.0 pins pynini==2.1.6.post1 (a downgrade), pulls pandas, transformers, "
    "sacremoses, editdistance, inflect, and builds cdifflib and wget from source: heavier than it is worth.",
    "text2num 3.1.0 is a Rust wheel; it only turns number words into digits (no money, time, date or phone "
    "semantics) and writes 'one point five million' as '1.5 1000000'.",
]

Normalize = Callable[[str], str]


@dataclass
class Case:
    category: str
    spoken: str
    expected: str


@dataclass
class Result:
    system: str
    per_category: dict[str, list[bool]] = field(default_factory=dict)
    failures: list[tuple[Case, str]] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    load_s: float = 0.0
    note: str = ""

    @property
    def correct(self) -> int:
        return sum(sum(hits) for hits in self.per_category.values())

    @property
    def total(self) -> int:
        return sum(len(hits) for hits in self.per_category.values())


def load_cases(language: str) -> list[Case]:
    cases = []
    for line in (DATA / f"itn_{language}.tsv").read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            category, spoken, expected = line.split("\t")
            cases.append(Case(category, spoken, expected))
    return cases


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Candidates log and print while building grammars; keep the report readable."""
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logging.disable(logging.NOTSET)


def evaluate(system: str, normalize: Normalize, cases: list[Case], load_s: float, timed: bool) -> Result:
    result = Result(system, load_s=load_s)
    for case in cases:
        written = normalize(case.spoken)
        result.per_category.setdefault(case.category, []).append(written == case.expected)
        if written != case.expected:
            result.failures.append((case, written))
    if timed:
        for _ in range(ROUNDS):
            for case in cases:
                started = time.perf_counter()
                normalize(case.spoken)
                result.latency_ms.append((time.perf_counter() - started) * 1000)
    return result


# --- systems ------------------------------------------------------------------------------------

_TENS = "twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
_HYPHEN = re.compile(rf"\b({_TENS})-(\w+)", re.IGNORECASE)


def adapted(normalize: Normalize) -> Normalize:
    """The minimal ASR adapter: split "twenty-five", re-attach the punctuation the tool spaced off."""

    def run(text: str) -> str:
        written = normalize(_HYPHEN.sub(r"\1 \2", text))
        return re.sub(r" +([.,!?;:%])", r"\1", written)

    return run


def timed_load(build: Callable[[], Normalize]) -> tuple[Normalize, float]:
    started = time.perf_counter()
    with quiet():
        normalize = build()
    return normalize, time.perf_counter() - started


def qasr_loads(language: str) -> tuple[Normalize, float, float]:
    """qasr's normalizer with the grammar compiled into an empty cache, then read back from it."""
    from qasr.text.itn import InverseNormalizer

    with tempfile.TemporaryDirectory() as cache:
        compiled = InverseNormalizer(Path(cache)).warm_up((language,))[language]
        normalizer = InverseNormalizer(Path(cache))
        cached = normalizer.warm_up((language,))[language]
    return (lambda text: normalizer.apply(text, language)), compiled, cached


def candidates(language: str, cache: Path) -> Iterator[tuple[str, Callable[[], Normalize], str]]:
    """(name, build, install hint) for the stock libraries we compared against."""
    if language == "zh":

        def wetext_zh() -> Normalize:
            from itn.chinese.inverse_normalizer import InverseNormalizer

            return InverseNormalizer().normalize  # the precompiled FST shipped in the wheel

        yield "wetext", wetext_zh, "pip install WeTextProcessing==1.2.0"
        return

    def wetext_en() -> Normalize:
        from itn.english.inverse_normalizer import InverseNormalizer

        return InverseNormalizer(cache_dir=str(cache / "wetext")).normalize

    def nemo_en() -> Normalize:
        from nemo_text_processing.inverse_text_normalization.inverse_normalize import InverseNormalizer

        normalizer = InverseNormalizer(lang="en", input_case="cased", cache_dir=str(cache / "nemo"))
        return lambda text: normalizer.inverse_normalize(text, verbose=False)

    def text2num_en() -> Normalize:
        from text_to_num import alpha2digit

        return lambda text: alpha2digit(text, "en")

    yield "wetext", wetext_en, "pip install WeTextProcessing==1.2.0"
    yield "nemo", nemo_en, "pip install nemo_text_processing==1.2.0 (pins pynini==2.1.6.post1)"
    yield "text2num", text2num_en, "pip install text2num==3.1.0"


def run_language(language: str, quick: bool) -> list[Result]:
    cases = load_cases(language)
    normalize, compiled_s, cached_s = qasr_loads(language)
    normalize(cases[0].spoken)  # warm-up: first call pays for lazy imports
    qasr = evaluate("qasr", normalize, cases, cached_s, timed=True)
    qasr.note = f"load: compile {compiled_s:.2f} s (no cache), read {cached_s:.3f} s (cached)"
    results = [qasr]
    if quick:
        return results
    with tempfile.TemporaryDirectory() as cache:
        for name, build, hint in candidates(language, Path(cache)):
            try:
                stock, load_s = timed_load(build)
            except ImportError:
                results.append(Result(name, note=f"not installed: {hint}"))
                continue
            with quiet():
                results.append(evaluate(name, stock, cases, load_s, timed=True))
                if language == "en":  # the adapter only concerns English spacing and hyphens
                    results.append(evaluate(f"{name}+adapter", adapted(stock), cases, load_s, timed=False))
    return results


# --- report -------------------------------------------------------------------------------------


def conditions() -> str:
    versions = []
    for package in ("WeTextProcessing", "pynini", "nemo_text_processing", "text2num"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions.append(f"{package} {importlib.metadata.version(package)}")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (
        f"Python {platform.python_version()} on {platform.machine()} {platform.system()}, {cpus} CPUs{load}; "
        + ", ".join(versions)
    )


def percent(hits: int, total: int) -> str:
    return f"{100 * hits / total:5.1f}%" if total else "   -  "


def report(language: str, results: list[Result], failures: bool) -> None:
    measured = [r for r in results if r.total]
    categories = list(measured[0].per_category)
    print(f"\n== {language}: exact match, {measured[0].total} sentences ==")
    print(f"{'category':<10} {'n':>4}  " + "  ".join(f"{r.system:>16}" for r in measured))
    for category in categories:
        n = len(measured[0].per_category[category])
        cells = [percent(sum(r.per_category[category]), n) for r in measured]
        print(f"{category:<10} {n:>4}  " + "  ".join(f"{cell:>16}" for cell in cells))
    overall = [f"{percent(r.correct, r.total)} ({r.correct})" for r in measured]
    print(f"{'overall':<10} {measured[0].total:>4}  " + "  ".join(f"{cell:>16}" for cell in overall))
    print(f"\n{'system':<16} {'load s':>8} {'mean ms':>8} {'p95 ms':>8}  per sentence, after warm-up")
    for r in results:
        if not r.total:
            print(f"{r.system:<16} {r.note}")
            continue
        if r.latency_ms:
            ordered = sorted(r.latency_ms)
            p95 = ordered[int(0.95 * (len(ordered) - 1))]
            print(f"{r.system:<16} {r.load_s:8.3f} {statistics.mean(ordered):8.3f} {p95:8.3f}  {r.note}")
    if failures:
        for r in measured:
            for case, written in r.failures:
                print(
                    f"  {r.system} [{case.category}] {case.spoken!r}\n      got {written!r}\n      exp {case.expected!r}"
                )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--failures", action="store_true", help="list every miss of every system")
    parser.add_argument("--quick", action="store_true", help="qasr only, no candidates")
    args = parser.parse_args()
    started = time.perf_counter()
    import qasr.text.itn_rules  # noqa: F401  (pynini and WeTextProcessing: the one-time import cost)

    import_s = time.perf_counter() - started
    print(conditions())
    print(f"import of pynini + WeTextProcessing grammars: {import_s:.2f} s (once per process, lazily)")
    for language in ("zh", "en"):
        report(language, run_language(language, args.quick), args.failures)
    print("\nFindings:")
    for finding in FINDINGS:
        print(f"- {finding}")


if __name__ == "__main__":
    sys.exit(main())

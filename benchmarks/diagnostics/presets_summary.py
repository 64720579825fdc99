"""Summarise the committed tuned presets of a benchmark: per method, validation P_1 at the defaults (trial 0)
and at the chosen trial, whether each meets the compatibility criterion on validation, and what was chosen.

    python benchmarks/diagnostics/presets_summary.py synth_class30to100 [synth_data30to100 ...]

Prints a Markdown table per benchmark (validation data only; P-metrics 0–100).
"""

from __future__ import annotations

import sys


def main(benchmarks: list[str]) -> None:
    from bctbench.presets import presets_dir, read_preset

    for bench in benchmarks:
        folder = presets_dir() / bench
        print(f"\n### {bench} (validation, seed 0)\n")
        print(
            "| method | trials | default P_1 | default compatible | tuned P_1 | tuned compatible | chosen | selected by |"
        )
        print("|---|---:|---:|---|---:|---|---|---|")
        for path in sorted(folder.glob("*.yaml")):
            doc = read_preset(path)
            trials = doc["trials"]
            if not trials or "P_1" not in trials[0]["scores"]:
                continue  # the paragon
            first = trials[0]["scores"]
            default = f"| {first['P_1']:.2f} | {'yes' if first['compatible'] else 'no'} "
            if not doc.get("complete"):  # still tuning: nothing chosen yet
                print(f"| {doc['method']} (incomplete) | {len(trials)} {default}| – | – | – | – |")
                continue
            best = next(t for t in trials if t["trial"] == doc.get("chosen_trial"))["scores"]
            chosen = " ".join(f"{k}={v}" for k, v in sorted(doc["chosen"].items())) or "(defaults)"
            print(
                f"| {doc['method']} | {len(trials)} {default}| {best['P_1']:.2f} | "
                f"{'yes' if best['compatible'] else 'no'} | {chosen} | {doc.get('selected_by', '')} |"
            )


if __name__ == "__main__":
    main(sys.argv[1:] or ["synth_class30to100", "synth_data30to100"])

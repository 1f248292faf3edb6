"""Compute figures from the numbers the task states and save them as JSON."""

import json
import math
import pathlib
import re
import statistics
import sys

# values: the offline model writes the task's values here
TASK_TEXT = "an example task with 3 numbers: 4.5 and 10"
OUTPUT = "notes/figures.json"
NUMBER_PATTERN = r"-?[0-9]+(?:\.[0-9]+)?"
# end of values


NO_NUMBERS = "the task states no numbers, so there is nothing to compute"


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def main() -> None:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    workspace = pathlib.Path.cwd().resolve()
    target = (workspace / OUTPUT).resolve()
    if not target.is_relative_to(workspace):
        sys.exit("refusing to write outside the workspace: " + str(target))
    numbers = [float(text) for text in re.findall(NUMBER_PATTERN, TASK_TEXT)]
    numbers = [number for number in numbers if math.isfinite(number)]
    figures: dict[str, object] = {"task": TASK_TEXT, "numbers": numbers, "count": len(numbers)}
    if numbers:
        total = sum(numbers)
        figures["sum"] = finite_or_none(total)
        figures["mean"] = finite_or_none(total / len(numbers))
        figures["median"] = finite_or_none(statistics.median(numbers))
        figures["min"] = min(numbers)
        figures["max"] = max(numbers)
    else:
        # An empty file would look like a failure: say why there is nothing to compute.
        figures["note"] = NO_NUMBERS
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if numbers:
        print(f"Numbers in the task: {len(numbers)}")
    else:
        print(f"No figures: {NO_NUMBERS}.")
    for name in ("sum", "mean", "median", "min", "max"):
        if name in figures:
            print(f"  {name:<8} {figures[name]}")
    print(f"Wrote {OUTPUT}")


if __name__ == "__main__":
    main()

"""Summarise a list of numbers: count, sum, mean, median, minimum and maximum.

Run it as `python <this file> [NUMBER ...]`; without numbers it uses the ones below, the
numbers the task stated.
"""

import statistics
import sys

# values: the offline model writes the task's values here
NUMBERS: tuple[float, ...] = (4.5, 10.0)
# end of values


def summary(numbers: list[float]) -> dict[str, float]:
    """Return the figures of a non-empty list of numbers."""
    return {
        "count": len(numbers),
        "sum": sum(numbers),
        "mean": statistics.fmean(numbers),
        "median": statistics.median(numbers),
        "min": min(numbers),
        "max": max(numbers),
    }


def main(argv: list[str]) -> None:
    numbers = [float(text) for text in argv[1:]] or list(NUMBERS)
    if not numbers:
        print("No numbers to summarise: the task stated none.")
        print("Pass some on the command line, for example: python number_summary.py 3 4.5 10")
        return
    print(f"Summary of {len(numbers)} number{'s' if len(numbers) != 1 else ''}:")
    for name, value in summary(numbers).items():
        print(f"  {name:<7} {value:g}")


if __name__ == "__main__":
    main(sys.argv)

"""Print the first numbers of the Fibonacci sequence.

Run it as `python <this file> [COUNT]`; without COUNT it uses the one below.
"""

import sys

# values: the offline model writes the task's values here
COUNT = 20
# end of values


def fibonacci(count: int) -> list[int]:
    """Return the first `count` Fibonacci numbers, starting 0, 1."""
    numbers: list[int] = []
    current, following = 0, 1
    for _ in range(count):
        numbers.append(current)
        current, following = following, current + following
    return numbers


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else COUNT
    numbers = fibonacci(count)
    noun = "Fibonacci number" if count == 1 else "Fibonacci numbers"
    print(f"The first {count} {noun}:")
    for index, number in enumerate(numbers, 1):
        print(f"  {index:>4}  {number}")


if __name__ == "__main__":
    main(sys.argv)

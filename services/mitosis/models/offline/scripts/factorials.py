"""Print the factorials n! for n from 0 to a limit.

Run it as `python <this file> [LIMIT]`; without LIMIT it uses the one below.
"""

import math
import sys

# values: the offline model writes the task's values here
LIMIT = 10
# end of values


def main(argv: list[str]) -> None:
    limit = int(argv[1]) if len(argv) > 1 else LIMIT
    print(f"Factorials from 0! to {limit}!:")
    for number in range(limit + 1):
        print(f"  {number:>4}! = {math.factorial(number)}")


if __name__ == "__main__":
    main(sys.argv)

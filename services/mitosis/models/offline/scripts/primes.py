"""List the prime numbers up to a limit, with the sieve of Eratosthenes.

Run it as `python <this file> [LIMIT]`; without LIMIT it uses the one below.
"""

import sys

# values: the offline model writes the task's values here
LIMIT = 100
# end of values


def primes_up_to(limit: int) -> list[int]:
    """Return the primes from 2 to `limit`, in order."""
    if limit < 2:
        return []
    sieve = bytearray([1]) * (limit + 1)
    sieve[0] = sieve[1] = 0
    for number in range(2, int(limit**0.5) + 1):
        if sieve[number]:
            sieve[number * number :: number] = bytes(len(range(number * number, limit + 1, number)))
    return [number for number, is_prime in enumerate(sieve) if is_prime]


def main(argv: list[str]) -> None:
    limit = int(argv[1]) if len(argv) > 1 else LIMIT
    primes = primes_up_to(limit)
    noun = "prime number" if len(primes) == 1 else "prime numbers"
    print(f"{len(primes)} {noun} up to {limit}:")
    for start in range(0, len(primes), 10):
        print("  " + " ".join(str(prime) for prime in primes[start : start + 10]))


if __name__ == "__main__":
    main(sys.argv)

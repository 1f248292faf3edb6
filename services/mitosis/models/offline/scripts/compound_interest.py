"""Show how a sum grows at compound interest, year by year.

Run it as `python <this file> [PRINCIPAL RATE_PERCENT YEARS]`; without them it uses the ones
below.
"""

import sys

# values: the offline model writes the task's values here
PRINCIPAL = 1000.0
RATE_PERCENT = 5.0
YEARS = 10
# end of values


def balances(principal: float, rate_percent: float, years: int) -> list[float]:
    """Return the balance at the end of each year, interest compounded yearly."""
    growth = 1 + rate_percent / 100
    return [principal * growth**year for year in range(1, years + 1)]


def main(argv: list[str]) -> None:
    principal, rate, years = PRINCIPAL, RATE_PERCENT, YEARS
    if len(argv) == 4:
        principal, rate, years = float(argv[1]), float(argv[2]), int(argv[3])
    print(f"{principal:,.2f} at {rate:g}% a year, compounded yearly, for {years} years:")
    for year, balance in enumerate(balances(principal, rate, years), 1):
        print(f"  year {year:>3}  {balance:>16,.2f}")
    if years > 0:
        print(f"Interest earned: {balances(principal, rate, years)[-1] - principal:,.2f}")


if __name__ == "__main__":
    main(sys.argv)

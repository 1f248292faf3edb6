"""Save a program the task asked for as a file in the workspace."""

import pathlib
import sys

# values: the offline model writes the task's values here
PATH = "program.py"
SOURCE = 'print("hello")\n'
# end of values


def main() -> None:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    workspace = pathlib.Path.cwd().resolve()
    target = (workspace / PATH).resolve()
    if not target.is_relative_to(workspace):
        sys.exit("refusing to write outside the workspace: " + str(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(SOURCE, encoding="utf-8")
    compile(SOURCE, PATH, "exec")  # a program that does not even parse fails this step
    lines = SOURCE.count("\n")
    print(f"Wrote {PATH}: {lines} line{'s' if lines != 1 else ''} of Python.")
    print(f"Run it with: python {PATH}")


if __name__ == "__main__":
    main()

"""Run a program saved in the workspace as `python PATH` would, its output shown as it comes."""

import pathlib
import runpy
import sys

# values: the offline model writes the task's values here
PATH = "program.py"
# end of values


def main() -> None:
    sys.stdout.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
    workspace = pathlib.Path.cwd().resolve()
    target = (workspace / PATH).resolve()
    if not target.is_relative_to(workspace):
        sys.exit("refusing to run a file outside the workspace: " + str(target))
    print(f"$ python {PATH}", flush=True)
    sys.argv = [PATH]
    runpy.run_path(str(target), run_name="__main__")


if __name__ == "__main__":
    main()

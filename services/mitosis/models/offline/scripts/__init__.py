"""The programs the offline model's python steps run, as real modules that ruff and mypy read.

Each starts with a block of values between two marker lines; the offline model replaces that
block with the task's values as `ascii()` literals when it makes a step's code
(`mitosis.models.offline.script_code`), so task text never enters the code otherwise.
"""

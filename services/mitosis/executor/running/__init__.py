"""Running tasks: `runner` (plan, then each step, under the task's lease), `control` (ending,
cancelling and approving as conditional appends), `planner_client`, `planned_agent` (the
offline model's step agent) and `quotas` (per-key and per-task limits)."""

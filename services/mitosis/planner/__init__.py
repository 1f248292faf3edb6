"""The planner service: turns a task in plain words into a plan of steps. Stateless."""

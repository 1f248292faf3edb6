"""Models that plan tasks and write documents: the offline model, and (later) OpenAI's."""

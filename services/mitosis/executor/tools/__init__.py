"""What a step can do, and how each use is recorded.

- `catalogue`: the tools this executor offers (built-in and from MCP servers).
- `recorded`: a step's tools, recording every use in the task's log.
- `builtin`: python, list_files, read_file; `pages`: write_document's page writer;
  `fetch` and `web_search`: the web, guarded; `mcp`: tools of MCP servers.
- `workspace`: the task's folder, which every tool is confined to.
- `sandbox`: how python runs (and stdio MCP servers) are confined.
"""

"""`flashmoe bench`: decode speed on this machine, flashmoe against stock llama-cpp-python, under RAM caps.

Modules, one job each: `model` (facts from the GGUF), `machine` (description, how busy it is), `cgroup` (a cgroup
v1 memory group per run), `disk` (cold random-read bandwidth, the decode bound), `worker` (one configuration in
a fresh process), `runner` (runs and watches a worker), `plan` (which runs, the budget rule), `extrapolate`
(slice -> full model), `report` (JSON, Markdown), `plots` (PNG, optional), `arguments` (the CLI's options, light
to import), `command` (the CLI entry: runs the plan, writes the report).
"""

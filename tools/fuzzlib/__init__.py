"""The fuzz harness behind tools/fuzz.py and tests/test_fuzz.py: structure-aware mutators (mutate.py, gguf_struct.py),
the targets (targets.py: which parser, which seed files, which exception is a clean error) and the runner
(runner.py: a worker process per target with a memory limit, a timeout per input, and the classification
ok / clean / crash / hang / leak)."""

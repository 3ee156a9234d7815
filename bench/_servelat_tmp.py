import sys, tempfile
from pathlib import Path
from machine import machine_line
from servekit import default_model
from serve import latency_at
print(machine_line())
with tempfile.TemporaryDirectory(prefix="embedd-sb-") as tmp:
    for row in latency_at(Path(tmp), Path("/work/main/models/all-MiniLM-L6-v2.f32.gguf"), int(sys.argv[1]), queries=40, cli_runs=1, cold_runs=1):
        print(row, flush=True)

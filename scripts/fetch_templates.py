#!/usr/bin/env python3
"""Fetch real chat templates for tests/real_templates.rs: the 71 Jinja templates that
llama.cpp keeps under models/templates (Llama 3.x, Qwen 2.5/3, DeepSeek, Mistral, Gemma,
Phi, Hermes, Functionary, Command R, Kimi, ...), taken from the llama-cpp-python 0.3.36 sdist on
PyPI (it vendors llama.cpp). Checked by sha256, extracted to models/templates/. Idempotent.
A plain HTTPS download from PyPI's file host: `pip download` would try to build the sdist."""
import hashlib, io, json, os, sys, tarfile, urllib.request

VERSION = "0.3.36"
SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
OUT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "templates"))
DONE = os.path.join(OUT, ".sha256-" + SHA256[:16])

if os.path.exists(DONE):
    print(f"templates: {OUT} (sha256 ok)")
    sys.exit(0)
# PyPI's simple index (PEP 691 JSON), which is what pip itself reads.
req = urllib.request.Request(
    "https://pypi.org/simple/llama-cpp-python/",
    headers={"Accept": "application/vnd.pypi.simple.v1+json"},
)
files = json.load(urllib.request.urlopen(req, timeout=60))["files"]
url = next(f["url"] for f in files if f["filename"] == f"llama_cpp_python-{VERSION}.tar.gz")
print(f"fetching llama-cpp-python {VERSION} sdist from PyPI for its chat templates ...")
data = urllib.request.urlopen(url, timeout=300).read()
if hashlib.sha256(data).hexdigest() != SHA256:
    sys.exit("error: sha256 mismatch for the llama-cpp-python sdist")
os.makedirs(OUT, exist_ok=True)
n = 0
with tarfile.open(fileobj=io.BytesIO(data)) as tar:
    for m in tar.getmembers():
        if m.isfile() and "/vendor/llama.cpp/models/templates/" in m.name and m.name.endswith(".jinja"):
            with open(os.path.join(OUT, os.path.basename(m.name)), "wb") as f:
                f.write(tar.extractfile(m).read())
            n += 1
open(DONE, "w").close()
print(f"templates: {n} in {OUT}")

"""Hub export: auto_map, remote code that loads where the package is hidden, atomic writes, the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_alibi.cli import main as cli_main
from modeling_alibi.hub import PAYLOAD, export_for_hub

from conftest import tiny_model

# Runs in a fresh interpreter: `modeling_alibi` cannot be imported there, so only the exported files can serve.
# With an argv[3] of "no-triton", triton is missing too (a CPU-only torch build, macOS): the import check that
# transformers runs on each downloaded Hub file must pass, and the model must load without the Triton kernel.
LOAD_HIDDEN = textwrap.dedent(
    """
    import importlib.abc, json, os, sys
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "modeling_alibi":
                raise ImportError("modeling_alibi is hidden in this process")
    sys.meta_path.insert(0, Hide())
    if sys.argv[3:] == ["no-triton"]:
        sys.modules["triton"] = None  # `import triton` raises ModuleNotFoundError, find_spec returns None
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    from transformers.dynamic_module_utils import check_imports
    for name in os.listdir(sys.argv[1]):
        if name.endswith(".py"):
            check_imports(os.path.join(sys.argv[1], name))  # raises ImportError naming a missing package
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    ids = torch.tensor(json.loads(sys.argv[2]))
    attention = sys.modules[type(model).__module__.rsplit(".", 1)[0] + ".alibi_attention"]
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__,
                      "kernels": [name for name in ("alibi_flash_attention", "alibi_decode_attention")
                                  if getattr(attention, name) is not None],
                      "logits": model(ids).logits.tolist(),
                      "generated": model.generate(ids, max_new_tokens=30, min_new_tokens=30,
                                                  do_sample=False).tolist()}))
    """
)


@pytest.mark.parametrize("triton", ["installed", "no-triton"])
def test_exported_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path, triton):
    if triton == "installed":
        pytest.importorskip("triton")
    model = tiny_model(6, "sdpa")
    out = export_for_hub(model, tmp_path / "export", name="alibi-tiny")
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "README.md", *PAYLOAD} <= files
    auto_map = json.loads((out / "config.json").read_text())["auto_map"]
    assert auto_map == {
        "AutoConfig": "configuration_alibi.AlibiConfig",
        "AutoModel": "modeling_alibi.AlibiModel",
        "AutoModelForCausalLM": "modeling_alibi.AlibiForCausalLM",
    }
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "alibi" in card

    ids = [[5, 6, 7, 8, 9, 10]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", LOAD_HIDDEN, str(out), json.dumps(ids), triton], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")  # the shipped copy, not our package
    assert loaded["base"] == "AlibiModel"
    # The shipped kernel files, imported when they can be.
    assert loaded["kernels"] == (["alibi_flash_attention", "alibi_decode_attention"] if triton == "installed" else [])
    torch.testing.assert_close(torch.tensor(loaded["logits"]), model(torch.tensor(ids)).logits, atol=1e-6, rtol=0)
    expected = model.generate(torch.tensor(ids), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert loaded["generated"] == expected.tolist()


def test_plain_save_pretrained_ships_remote_code(tmp_path):
    """transformers' custom_object_save copies modeling_alibi.py and, following its relative imports, the rest."""
    tiny_model().save_pretrained(tmp_path)
    assert all((tmp_path / name).exists() for name in PAYLOAD)
    assert "AutoModelForCausalLM" in json.loads((tmp_path / "config.json").read_text())["auto_map"]


def _payload_path(name: str) -> str:
    import modeling_alibi

    return os.path.join(os.path.dirname(modeling_alibi.__file__), name)


def test_remote_code_imports_only_torch_transformers_stdlib_and_each_other():
    import ast

    payload_modules = [name.removesuffix(".py") for name in PAYLOAD]
    for name in PAYLOAD:
        tree = ast.parse(open(_payload_path(name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in payload_modules, node.module
                continue
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                top = module.split(".")[0]
                # Imported inside try/except: flash-attn by the model, triton and cudnn by their kernel files only.
                optional = top == "flash_attn" or (top == "triton" and name.startswith("alibi_triton"))
                optional = optional or (top == "cudnn" and name == "alibi_cudnn.py")
                assert optional or top in ("torch", "transformers", "__future__") or top in sys.stdlib_module_names, (
                    name, module)


def test_remote_code_check_demands_only_torch_and_transformers():
    """What transformers requires before running a Hub file: no optional kernel package may be among it."""
    from transformers.dynamic_module_utils import get_imports

    for name in PAYLOAD:
        packages = {p for p in get_imports(_payload_path(name)) if p not in sys.stdlib_module_names}
        assert packages <= {"torch", "transformers"}, (name, packages)


def test_export_is_atomic_and_refuses_to_overwrite(tmp_path):
    model = tiny_model()
    target = tmp_path / "export"
    export_for_hub(model, target)
    with pytest.raises(FileExistsError, match="overwrite"):
        export_for_hub(model, target)

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        export_for_hub(model, tmp_path / "broken", tokenizer=BrokenTokenizer())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no staging folder, no half-written output


def test_export_cli(tmp_path):
    tiny_model().save_pretrained(tmp_path / "model")
    assert cli_main(["export", str(tmp_path / "model"), "--output", str(tmp_path / "hub"), "--dtype", "bfloat16"]) == 0
    assert (tmp_path / "hub" / "modeling_alibi.py").exists()
    config = json.loads((tmp_path / "hub" / "config.json").read_text())
    assert config["dtype"] == "bfloat16"

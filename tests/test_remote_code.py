"""Hub export: auto_map, remote code that loads where the package is hidden, atomic writes, the CLI."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from modeling_alibi.cli import main as cli_main
from modeling_alibi.hub import export_for_hub

from conftest import tiny_model

# Runs in a fresh interpreter: `modeling_alibi` cannot be imported there, so only the exported files can serve.
LOAD_HIDDEN = textwrap.dedent(
    """
    import importlib.abc, json, sys
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] == "modeling_alibi":
                raise ImportError("modeling_alibi is hidden in this process")
    sys.meta_path.insert(0, Hide())
    import torch
    from transformers import AutoModel, AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
    ids = torch.tensor(json.loads(sys.argv[2]))
    print(json.dumps({"module": type(model).__module__, "base": type(base).__name__,
                      "logits": model(ids).logits.tolist(),
                      "generated": model.generate(ids, max_new_tokens=30, min_new_tokens=30, do_sample=False).tolist()}))
    """
)


def test_exported_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    model = tiny_model(6, "sdpa")
    out = export_for_hub(model, tmp_path / "export", name="alibi-tiny")
    files = set(os.listdir(out))
    assert {"config.json", "generation_config.json", "model.safetensors", "modeling_alibi.py",
            "configuration_alibi.py", "README.md"} <= files
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
    result = subprocess.run([sys.executable, "-c", LOAD_HIDDEN, str(out), json.dumps(ids)], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")  # the shipped copy, not our package
    assert loaded["base"] == "AlibiModel"
    torch.testing.assert_close(torch.tensor(loaded["logits"]), model(torch.tensor(ids)).logits, atol=1e-6, rtol=0)
    expected = model.generate(torch.tensor(ids), max_new_tokens=30, min_new_tokens=30, do_sample=False)
    assert loaded["generated"] == expected.tolist()


def test_plain_save_pretrained_ships_remote_code(tmp_path):
    tiny_model().save_pretrained(tmp_path)
    assert (tmp_path / "modeling_alibi.py").exists() and (tmp_path / "configuration_alibi.py").exists()
    assert "AutoModelForCausalLM" in json.loads((tmp_path / "config.json").read_text())["auto_map"]


def test_remote_code_imports_only_torch_transformers_stdlib_and_each_other():
    import ast
    import importlib.util

    import modeling_alibi

    package_dir = os.path.dirname(modeling_alibi.__file__)
    for name in ("modeling_alibi.py", "configuration_alibi.py"):
        tree = ast.parse(open(os.path.join(package_dir, name)).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                assert node.module in ("configuration_alibi", "modeling_alibi"), node.module
                continue
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) else [])
            for module in modules:
                top = module.split(".")[0]
                optional = top == "flash_attn"  # imported inside try/except ImportError
                assert optional or top in ("torch", "transformers", "__future__") or top in sys.stdlib_module_names, (
                    name, module)


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

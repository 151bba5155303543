"""Training: YAML/flag parsing, a CPU run that exports a loadable model, exact resume, and 2-process DDP and FSDP2
parity (FSDP2 resume too)."""

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
import yaml
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType
from safetensors.torch import load_file
from safetensors.torch import save as save_safetensors
from transformers import AutoModelForCausalLM, AutoTokenizer

from modeling_alibi import AlibiConfig, AlibiForCausalLM
from modeling_alibi.training import TrainArguments, checkpoint, loop, parse_args, train

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


def reset_accelerate() -> None:
    """Each in-process run builds its own Accelerator; Accelerate keeps process-wide singletons otherwise."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    reset_accelerate()
    yield
    reset_accelerate()


def write_corpus(root: Path) -> Path:
    """A small training text (about 30 blocks of 32 BPE tokens), a validation text and a tiny model config."""
    text = (REPO / "data" / "gutenberg-tiny" / "train.txt").read_text(encoding="utf-8")
    root.joinpath("train.txt").write_text(text[:1_500], encoding="utf-8")
    root.joinpath("valid.txt").write_text(text[1_500:3_000], encoding="utf-8")
    root.joinpath("model.json").write_text(json.dumps(TINY_MODEL | {"hidden_dropout": 0.1}))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("train"))


def run_args(workdir: Path, output: str, **overrides) -> TrainArguments:
    fields = dict(
        model=str(workdir / "model.json"),
        train_files=[str(workdir / "train.txt")],
        validation_files=[str(workdir / "valid.txt")],
        cache_dir=str(workdir / "cache"),
        vocab_size=300,
        seq_len=32,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        warmup_steps=2,
        max_steps=6,
        eval_batches=2,
        log_every=1,
        report_to="none",
        output_dir=str(workdir / output),
    )
    return TrainArguments(**(fields | overrides))


def metrics(output_dir: Path, key: str = "train/loss") -> dict[int, float]:
    rows = [json.loads(line) for line in output_dir.joinpath("metrics.jsonl").read_text().splitlines()]
    values = [(row["step"], row[key]) for row in rows if key in row]
    assert len({step for step, _ in values}) == len(values), f"a step is logged twice: {values}"
    return dict(values)


def final_weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "final" / "model.safetensors")


def checkpoint_weights(output_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(output_dir / "checkpoints" / f"step_{step}" / "model.safetensors")


# --------------------------------------------------------------------------- parsing


def test_yaml_sets_defaults_and_flags_win(tmp_path: Path):
    preset = tmp_path / "run.yaml"
    preset.write_text(yaml.safe_dump({
        "train_files": ["a.txt", "b.txt"], "learning_rate": "3e-4", "seq_len": 64,
        "mixed_precision": "no", "max_steps": 10, "text_mode": "document", "dropout": 0.0,
    }))
    args = parse_args(["--config", str(preset), "--seq_len", "128", "--train_files", "c.txt"])
    assert args.seq_len == 128 and args.train_files == ["c.txt"]  # flags override the file
    assert args.learning_rate == 3e-4 and isinstance(args.learning_rate, float)  # YAML's "3e-4" string converted
    assert (args.max_steps, args.text_mode, args.mixed_precision, args.dropout) == (10, "document", "no", 0.0)


def test_yaml_unknown_key_is_named(tmp_path: Path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("train_files: [a.txt]\nlearnig_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown key 'learnig_rate'.*'learning_rate'"):
        parse_args(["--config", str(preset)])


def test_yaml_bad_choice_and_bad_number_are_named(tmp_path: Path):
    preset = tmp_path / "bad.yaml"
    preset.write_text("train_files: [a.txt]\ntext_mode: paragraph\n")
    with pytest.raises(ValueError, match=r"text_mode: 'paragraph' is not one of"):
        parse_args(["--config", str(preset)])
    preset.write_text("train_files: [a.txt]\nseq_len: long\n")
    with pytest.raises(ValueError, match=r"seq_len: cannot read 'long'"):
        parse_args(["--config", str(preset)])


def test_arguments_validate_sizes_and_sources():
    with pytest.raises(ValueError, match="train_files .* or dataset_name"):
        TrainArguments()
    with pytest.raises(ValueError, match="seq_len=0"):
        TrainArguments(train_files=["a.txt"], seq_len=0)


@pytest.mark.parametrize(("flags", "expected"), [
    ([], None), (["--torch_compile"], True), (["--torch_compile", "true"], True), (["--torch_compile", "false"], False),
], ids=["unset", "bare", "true", "false"])
def test_torch_compile_flag_forms(flags: list[str], expected: bool | None):
    """Unset leaves the choice to the device (None); a bare flag means true, as for the plain bool flags."""
    assert parse_args(["--train_files", "a.txt", *flags]).torch_compile is expected


def test_torch_compile_from_yaml(tmp_path: Path):
    preset = tmp_path / "run.yaml"
    preset.write_text("train_files: [a.txt]\n")
    assert parse_args(["--config", str(preset)]).torch_compile is None
    preset.write_text("train_files: [a.txt]\ntorch_compile: false\n")
    assert parse_args(["--config", str(preset)]).torch_compile is False
    assert parse_args(["--config", str(preset), "--torch_compile"]).torch_compile is True  # the flag wins


@pytest.mark.parametrize(("setting", "mode", "device", "expected"), [
    (None, None, "cpu", None), (None, None, "mps", None), (None, None, "cuda", "reduce-overhead"),
    (None, "default", "cuda", "default"), (None, "reduce-overhead", "cpu", "reduce-overhead"),
    (True, None, "cpu", "default"), (True, "max-autotune", "cpu", "max-autotune"),
    (True, None, "cuda", "reduce-overhead"), (False, None, "cpu", None), (False, None, "cuda", None),
])
def test_training_step_compiles_on_cuda_unless_told(caplog, setting: bool | None, mode: str | None, device: str,
                                                    expected: str | None):
    """The decision needs only the device's type, so a CUDA device object stands in for a GPU."""
    PartialState(cpu=True)  # Accelerate's logger refuses to log before a state exists
    caplog.set_level(logging.INFO, logger=loop.__name__)
    args = TrainArguments(train_files=["a.txt"], torch_compile=setting, torch_compile_mode=mode)
    assert loop.training_step_mode(args, torch.device(device)) == expected
    (message,) = [record.getMessage() for record in caplog.records if record.name == loop.__name__]
    path = f"torch.compile, mode {expected!r}" if expected else "eager, not compiled"
    reason = (f"--torch_compile {str(setting).lower()}" if setting is not None else
              f"--torch_compile_mode {mode}" if mode is not None else f"the default on {device}")
    assert f"Training step: {path} ({reason}" in message, message  # after Accelerate's "[RANK 0] "


@pytest.mark.parametrize(("processes", "seq_len", "expected"), [
    (1, 512, ("reduce-overhead", None)), (1, 16384, ("reduce-overhead", None)),
    (2, 512, ("default", "no CUDA graphs with 2 processes")),
    (1, 16385, ("default", "no CUDA graphs for rows over 16384 tokens")),
])
def test_cuda_graphs_are_the_default_only_where_checked(caplog, processes: int, seq_len: int, expected: tuple):
    """One CUDA process and rows of at most 16K tokens: what the GPU test below and cuDNN's capture allow."""
    assert loop.default_compile_mode("cuda", processes, seq_len) == expected
    assert loop.default_compile_mode("cpu", processes, seq_len) == ("default", None)
    PartialState(cpu=True)
    caplog.set_level(logging.INFO, logger=loop.__name__)
    args = TrainArguments(train_files=["a.txt"], seq_len=seq_len)
    assert loop.training_step_mode(args, torch.device("cuda"), processes) == expected[0]
    (message,) = [record.getMessage() for record in caplog.records if record.name == loop.__name__]
    why_not_graphs = f"; {expected[1]}" if expected[1] else ""
    assert message.endswith(f"(the default on cuda; --torch_compile false changes it{why_not_graphs}; "
                            "--torch_compile_mode changes the mode)."), message


def test_torch_compile_mode_flag_is_checked():
    assert parse_args(["--train_files", "a.txt"]).torch_compile_mode is None
    assert parse_args(["--train_files", "a.txt", "--torch_compile_mode", "reduce-overhead"]).torch_compile_mode == \
        "reduce-overhead"
    with pytest.raises(SystemExit):  # argparse names the choices on stderr
        parse_args(["--train_files", "a.txt", "--torch_compile_mode", "fast"])
    with pytest.raises(ValueError, match="torch_compile_mode='reduce-overhead' needs a compiled step"):
        parse_args(["--train_files", "a.txt", "--torch_compile", "false", "--torch_compile_mode", "reduce-overhead"])


@pytest.mark.parametrize("preset", sorted((REPO / "configuration" / "train").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_train_presets_parse(preset: Path):
    args = parse_args(["--config", str(preset)])
    assert args.seq_len > 0 and args.train_files
    assert args.torch_compile is None  # the presets leave compiling to the device (on for CUDA)
    model = REPO / "configuration" / "models" / f"{args.model}.json"
    assert AlibiConfig.from_json_file(model).position_encoding == "alibi"


def test_shipped_model_presets_load():
    presets = {p.stem: AlibiConfig.from_json_file(p) for p in (REPO / "configuration" / "models").glob("*.json")}
    paper = presets["wikitext103-paper"]
    assert (paper.num_hidden_layers, paper.hidden_size, paper.num_attention_heads, paper.vocab_size) == (
        16, 1024, 8, 267744)
    assert paper.adaptive_input_cutoffs == paper.adaptive_softmax_cutoffs == [20000, 60000]
    assert paper.tie_adaptive_proj and paper.normalize_before and not paper.final_layer_norm
    assert (presets["tiny"].hidden_size, presets["tiny"].num_hidden_layers) == (32, 2)


def test_token_budget_sets_the_step_count(workdir: Path):
    args = run_args(workdir, "unused", max_steps=None, max_train_tokens=1000, gradient_accumulation_steps=2)
    assert loop.total_steps(args, batches_per_epoch=50, num_processes=2) == 2  # ceil(1000 / (32*4*2*2))
    assert loop.total_steps(run_args(workdir, "unused", max_steps=None), 50, 1) == 50  # one epoch
    both = run_args(workdir, "unused", max_steps=3, max_train_tokens=10_000)  # 79 steps of 128 tokens
    assert loop.total_steps(both, 50, 1) == 3  # whichever budget runs out first


# --------------------------------------------------------------------------- training runs


def test_cpu_run_exports_a_loadable_model(workdir: Path):
    output = train(run_args(workdir, "export", report_to="tensorboard", eval_every=3, position_encoding="alibi"))
    assert output == workdir / "export" / "final"
    model = AutoModelForCausalLM.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert type(model).__name__ == "AlibiForCausalLM"
    assert model.config.train_seq_len == 32 and model.config.vocab_size == len(tokenizer) == 300
    ids = tokenizer("It was a dark night.", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(torch.cat([ids] * 4, dim=1)).logits  # longer than seq_len: ALiBi has no length cap
    assert logits.shape == (1, 4 * ids.shape[1], 300) and torch.isfinite(logits).all()
    losses, evals = metrics(output.parent), metrics(output.parent, "eval/loss")
    assert sorted(losses) == list(range(1, 7)) and sorted(evals) == [3, 6]
    assert list(output.parent.joinpath("tensorboard").glob("**/events.out.tfevents.*"))
    # A fresh run into the same folder (--overwrite) moves the old run aside whole, starts metrics.jsonl over and,
    # seeded, ends with the same weights.
    first = final_weights(output.parent)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    train(run_args(workdir, "export", eval_every=3, position_encoding="alibi", overwrite=True))
    assert metrics(output.parent) == losses
    (aside,) = workdir.glob("export.replaced-*")
    assert metrics(aside) == losses and aside.joinpath("final", "model.safetensors").is_file()
    for name, tensor in final_weights(output.parent).items():
        torch.testing.assert_close(tensor, first[name], rtol=0, atol=0, msg=name)


def test_compiled_training_follows_the_eager_run(workdir: Path, caplog):
    """torch_compile=True trains the same model and exports it with its plain parameter names (~12 s on 2 cores,
    most of it inductor compiling forward and backward for the CPU). The default run on the CPU is not compiled."""
    caplog.set_level(logging.INFO, logger=loop.__name__)
    # Dropout off: inductor draws its own random masks, so only a deterministic model can match step by step.
    eager = train(run_args(workdir, "eager-run", dropout=0.0))
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    compiled = train(run_args(workdir, "compiled-run", dropout=0.0, torch_compile=True))
    messages = [record.getMessage() for record in caplog.records]
    paths = [message[message.index("Training step:"):] for message in messages if "Training step:" in message]
    assert paths == ["Training step: eager, not compiled (the default on cpu; --torch_compile true changes it).",
                     "Training step: torch.compile, mode 'default' (--torch_compile true; --torch_compile_mode "
                     "changes the mode)."]
    expected, actual = final_weights(eager.parent), final_weights(compiled.parent)
    assert actual.keys() == expected.keys()  # no "_orig_mod." prefixes
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-3, atol=1e-4, msg=name)
    losses, compiled_losses = metrics(eager.parent), metrics(compiled.parent)
    assert losses.keys() == compiled_losses.keys()
    for step in losses:
        assert abs(losses[step] - compiled_losses[step]) < 1e-3, (step, losses[step], compiled_losses[step])


def test_compiled_training_loss_gives_the_backward_no_logits_gradient():
    """The loop compiles `training_loss(model)`, not the module: a compiled module also outputs the logits, and
    its backward graph then takes a (batch, length, vocab) gradient for them, which autograd fills with zeros."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    tangents = []

    def backward_compiler(graph, inputs):
        tangents.append([tuple(node.meta["val"].shape) for node in graph.graph.nodes
                         if node.op == "placeholder" and node.name.startswith("tangents")])
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=lambda graph, inputs: make_boxed_func(graph.forward),
                           bw_compiler=backward_compiler)
    torch.manual_seed(0)
    model = AlibiForCausalLM(AlibiConfig(vocab_size=100, **TINY_MODEL, hidden_dropout=0.0))
    ids = torch.randint(0, 100, (2, 16))
    eager = loop.training_loss(model)(input_ids=ids, labels=ids)
    compiled = torch.compile(loop.training_loss(model), backend=backend)(input_ids=ids, labels=ids)
    compiled.backward()
    torch.testing.assert_close(compiled, eager)
    torch._dynamo.reset()
    torch.compile(model, backend=backend)(input_ids=ids, labels=ids).loss.backward()
    torch._dynamo.reset()
    assert tangents == [[()], [(), (2, 16, 100)]]


@pytest.mark.gpu
# dropout None keeps the model file's: hidden_dropout 0.1, no attention dropout (flex_attention has none).
@pytest.mark.parametrize(("accumulation", "dropout"), [(1, 0.0), (2, 0.0), (1, None)])
def test_gpu_cuda_graph_training_follows_the_default_compiled_run(workdir: Path, caplog, accumulation: int,
                                                                  dropout: float | None):
    """The default on one CUDA process, mode "reduce-overhead" (CUDA graphs), trains as mode "default" does, step
    by step, through evaluation and checkpoints between the replays: both run the same kernels (bf16 autocast,
    cuDNN's ALiBi where the frontend is installed) and draw the same dropout masks, so only cuDNN's
    nondeterministic backward sums separate them. Losses are read steps after the replay that made them; at
    accumulation 2 the gradients of two replays add up."""
    caplog.set_level(logging.INFO, logger=loop.__name__)
    common = dict(dropout=dropout, mixed_precision="bf16", gradient_accumulation_steps=accumulation, max_steps=8,
                  eval_every=4, save_every=4, log_every=4)
    tag = f"{accumulation}-{dropout}"
    plain = train(run_args(workdir, f"default-{tag}", torch_compile_mode="default", **common))
    reset_accelerate()
    graphed = train(run_args(workdir, f"graphs-{tag}", **common))  # CUDA graphs: the default on CUDA
    messages = [record.getMessage() for record in caplog.records if "Training step:" in record.getMessage()]
    assert "mode 'default'" in messages[0] and "mode 'reduce-overhead'" in messages[1], messages
    expected, actual = metrics(plain.parent), metrics(graphed.parent)
    assert sorted(actual) == [4, 8]
    for step in expected:
        assert abs(expected[step] - actual[step]) < 2e-3, (step, expected[step], actual[step])
    # AdamW's first steps move each weight by about the learning rate (1e-2) whatever its gradient's size, so a
    # weight whose gradient sums to nearly 0 moves by the sign of cuDNN's rounding noise, and single elements of two
    # correct runs differ by up to 2e-2 (an elementwise tolerance failed on embed_tokens in 1 of 3 runs on an H200
    # in session 15, and once in 3 in session 14, its reason not kept).
    # So each tensor is compared by the norm of the runs' difference against the plain run's own last 4 updates:
    # a lost or doubled micro-batch or a stale graph input moves a whole tensor by about that much.
    start, weights = checkpoint_weights(plain.parent, 4), final_weights(plain.parent)
    ratios = {}
    for name, tensor in final_weights(graphed.parent).items():
        # A key bias adds q . b to every score of a query's row, which softmax cancels: its true gradient is 0,
        # and AdamW turns the rounding noise left in its place into full-size steps that differ from run to run.
        if not name.endswith("k_proj.bias"):
            update = (weights[name] - start[name]).float().norm()
            ratios[name] = float((tensor - weights[name]).float().norm() / update)
    print("largest difference / update:", max(ratios.items(), key=lambda item: item[1]))
    assert all(ratio < 0.1 for ratio in ratios.values()), {k: v for k, v in ratios.items() if v >= 0.1}


def test_resume_reproduces_the_uninterrupted_run(workdir: Path, monkeypatch):
    # 2 micro-batches per step; the crash comes after step 6, i.e. micro-batch 12, past an epoch end and
    # mid-epoch, so resuming needs both the next epoch's order and the skip within it.
    common = dict(max_steps=8, gradient_accumulation_steps=2, save_every=3)
    reference = train(run_args(workdir, "uninterrupted", **common)).parent
    (blocks,) = workdir.joinpath("cache").glob("blocks-train-*")
    batches_per_epoch = len(datasets.load_from_disk(str(blocks))) // 4
    assert batches_per_epoch < 12 and 12 % batches_per_epoch != 0

    save = loop.save_checkpoint

    def save_then_crash(accelerator, args, step, state):
        path = save(accelerator, args, step, state)
        if step == 6:
            raise KeyboardInterrupt("simulated preemption")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        train(run_args(workdir, "interrupted", **common))
    monkeypatch.undo()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()

    resumed = run_args(workdir, "interrupted", resume="latest", **common)
    train(resumed)
    output = Path(resumed.output_dir)
    assert sorted(p.name for p in output.joinpath("checkpoints").iterdir()) == ["step_3", "step_6"]
    # Safe formats only: nothing in a checkpoint is a pickle (see test_reliability_training.py).
    assert sorted(p.name for p in output.joinpath("checkpoints", "step_6").iterdir()) == [
        "complete.json", "model.safetensors", "optimizer.json", "optimizer.safetensors", "progress.json",
        "rng_0.json", "rng_0.safetensors", "scheduler.json"]
    reference_losses, resumed_losses = metrics(reference), metrics(output)
    assert list(resumed_losses) == list(range(1, 9))  # steps 7-8 come from the resumed run only
    torch.testing.assert_close(torch.tensor(list(resumed_losses.values())),
                               torch.tensor(list(reference_losses.values())), rtol=0, atol=1e-6)
    for name, tensor in final_weights(reference).items():
        torch.testing.assert_close(final_weights(output)[name], tensor, rtol=0, atol=1e-6, msg=name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(workdir: Path):
    """Same global batch (1 x 4 vs 2 x 2), dropout off: DDP's averaged gradient equals the single-process one."""
    single = run_args(workdir, "ddp-1", dropout=0.0, max_steps=4)
    train(single)
    double = run_args(workdir, "ddp-2", dropout=0.0, max_steps=4, per_device_train_batch_size=2)
    result = launch_two_cpu_processes(double)
    assert result.returncode == 0, result.stderr[-4000:]
    one, two = metrics(Path(single.output_dir)), metrics(Path(double.output_dir))
    assert list(two) == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(list(two.values())), torch.tensor(list(one.values())), rtol=0, atol=1e-4)
    eval_one, eval_two = metrics(Path(single.output_dir), "eval/loss"), metrics(Path(double.output_dir), "eval/loss")
    assert abs(eval_one[4] - eval_two[4]) < 1e-4
    for name, tensor in final_weights(Path(single.output_dir)).items():
        torch.testing.assert_close(final_weights(Path(double.output_dir))[name], tensor, rtol=0, atol=1e-4, msg=name)


def launch_two_cpu_processes(args: TrainArguments, launcher: tuple[str, ...] = ("--multi_gpu",),
                             script: tuple[str, ...] = (str(REPO / "scripts" / "train.py"),)):
    """`accelerate launch` of `script` with `args` as its flags, on 2 CPU processes that join over gloo.

    The default launcher: `accelerate launch --cpu --num_processes 2` starts several processes only through mpirun;
    the torchrun launcher (--multi_gpu) with ACCELERATE_USE_CPU starts 2 CPU processes (MULTI_CPU, DDP)."""
    flags = [f"--{k}={v}" for k, v in vars(args).items() if v is not None and not isinstance(v, list)]
    flags += ["--train_files", *args.train_files, "--validation_files", *args.validation_files]
    command = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), *script, *flags]
    env = os.environ | {"ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
                        "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _launch_fsdp2(args: TrainArguments, script: Path = REPO / "benchmarks" / "compare_runs.py"):
    """`train-fsdp-cpu` (configuration/accelerate/fsdp.yaml, FSDP2 forced on 2 CPU processes over gloo). On the
    CPU Accelerate runs an FSDP config as DDP; `train-fsdp-cpu` switches its FSDP2 path on."""
    return launch_two_cpu_processes(args, ("--config_file", str(REPO / "configuration" / "accelerate" / "fsdp.yaml")),
                                    (str(script), "train-fsdp-cpu"))


def test_two_process_fsdp2_matches_one_process_and_exports_plain_model(workdir: Path):
    """FSDP2 (configuration/accelerate/fsdp.yaml, forced on 2 CPU processes over gloo) trains like one process,
    and the export is the plain AlibiForCausalLM (FSDP2 swaps the class in place; save_pretrained must not see it)."""
    single = run_args(workdir, "fsdp-1", dropout=0.0, max_steps=4)
    train(single)
    double = run_args(workdir, "fsdp-2", dropout=0.0, max_steps=4, per_device_train_batch_size=2)
    result = _launch_fsdp2(double)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "2 processes (FSDP)" in result.stderr
    one, two = metrics(Path(single.output_dir)), metrics(Path(double.output_dir))
    torch.testing.assert_close(torch.tensor(list(two.values())), torch.tensor(list(one.values())), rtol=0, atol=1e-4)
    config = json.loads(Path(double.output_dir, "final", "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_alibi.AlibiForCausalLM"
    assert not list(Path(double.output_dir, "final").glob("_fsdp*.py"))
    for name, tensor in final_weights(Path(single.output_dir)).items():
        torch.testing.assert_close(final_weights(Path(double.output_dir))[name], tensor, rtol=0, atol=1e-4, msg=name)
    model = AutoModelForCausalLM.from_pretrained(Path(double.output_dir, "final"))
    assert type(model).__name__ == "AlibiForCausalLM"


# compare_runs.py train-fsdp-cpu, with every process killed (no clean-up, like a preemption) right after the save
# of step {step}.
KILLED_AFTER_SAVE = """import os
import runpy

from modeling_alibi.training import loop

save = loop.save_checkpoint


def save_then_die(accelerator, args, step, state):
    path = save(accelerator, args, step, state)
    if step == {step}:
        os._exit(75)
    return path


loop.save_checkpoint = save_then_die
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
def test_two_process_fsdp2_resume_reproduces_the_uninterrupted_run(workdir: Path, tmp_path: Path):
    """FSDP2 checkpoints: the full states gathered at step 2 of a run killed right after that save, sharded back by
    `--resume latest`, give the uninterrupted run's losses and final weights. 2 micro-batches a step: the resumed
    steps cross an epoch end. The checkpoint is safetensors and JSON only (~70 s)."""
    common = dict(max_steps=4, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    whole = run_args(workdir, "fsdp-whole", **common)
    result = _launch_fsdp2(whole)
    assert result.returncode == 0, result.stderr[-4000:]

    cut = run_args(workdir, "fsdp-cut", save_every=2, **common)
    killer = tmp_path / "killed_after_save.py"
    killer.write_text(KILLED_AFTER_SAVE.format(step=2, script=str(REPO / "benchmarks" / "compare_runs.py")))
    result = _launch_fsdp2(cut, killer)
    assert result.returncode != 0 and "2 processes (FSDP)" in result.stderr, result.stderr[-4000:]
    output = Path(cut.output_dir)
    assert sorted(p.name for p in output.joinpath("checkpoints").iterdir()) == ["step_2"]
    assert list(metrics(output)) == [1, 2] and not output.joinpath("final").exists()
    step_2 = output / "checkpoints" / "step_2"
    assert sorted(p.name for p in step_2.iterdir()) == [  # safe formats only: nothing to unpickle
        "complete.json", "model.safetensors", "optimizer.json", "optimizer.safetensors", "progress.json",
        "rng_0.json", "rng_0.safetensors", "rng_1.json", "rng_1.safetensors", "scheduler.json"]
    model, moments = load_file(step_2 / "model.safetensors"), load_file(step_2 / "optimizer.safetensors")
    for name, tensor in model.items():  # full (gathered) states, the optimizer's keyed by parameter name
        if name != "lm_head.weight":  # tied to the embedding: one parameter for the optimizer
            assert moments[f"{name}.exp_avg"].shape == moments[f"{name}.exp_avg_sq"].shape == tensor.shape, name

    result = _launch_fsdp2(run_args(workdir, "fsdp-cut", save_every=2, resume="latest", **common))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Resumed from" in result.stderr and "step_2 at step 2" in result.stderr, result.stderr[-4000:]
    expected, actual = metrics(Path(whole.output_dir)), metrics(output)
    assert list(actual) == [1, 2, 3, 4]
    torch.testing.assert_close(torch.tensor(list(actual.values())), torch.tensor(list(expected.values())),
                               rtol=0, atol=1e-6)
    for name, tensor in final_weights(Path(whole.output_dir)).items():
        torch.testing.assert_close(final_weights(output)[name], tensor, rtol=0, atol=1e-6, msg=name)


def test_checkpoints_are_refused_with_deepspeed_only():
    """DeepSpeed's engine saves its own format, which unpickles; DDP, FSDP and one process save safe files."""
    with pytest.raises(checkpoint.CheckpointError, match="DeepSpeed: its engine saves its own checkpoint format"):
        checkpoint.check_supported(SimpleNamespace(distributed_type=DistributedType.DEEPSPEED))
    for kind in (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU, DistributedType.FSDP):
        checkpoint.check_supported(SimpleNamespace(distributed_type=kind))


def test_optimizer_state_keyed_by_name_or_number_round_trips(workdir: Path, tmp_path: Path):
    """FSDP's gathered optimizer state is keyed by parameter name ("model.layers.0....weight": dots), a plain one
    by number; both are written and read back. A named state loads into a plain optimizer (by order, as torch's
    load_state_dict reads it), and a numbered one is renamed for FSDP's set_optimizer_state_dict."""
    model = AlibiForCausalLM(AlibiConfig(vocab_size=50, **TINY_MODEL))
    args = run_args(workdir, "unused")
    optimizer = loop.build_optimizer(model, args, torch.device("cpu"))
    model(input_ids=torch.randint(0, 50, (2, 8)), labels=torch.randint(0, 50, (2, 8))).loss.backward()
    optimizer.step()
    numbered, named = optimizer.state_dict(), checkpoint.dsd.get_optimizer_state_dict(model, optimizer)
    assert all(isinstance(key, str) and "." in key for key in named["state"])
    for saved in (numbered, named):
        tensors, meta = checkpoint._split_optimizer(saved)
        tmp_path.joinpath("optimizer.safetensors").write_bytes(save_safetensors(tensors))
        tmp_path.joinpath("optimizer.json").write_text(json.dumps(meta))
        read = checkpoint._read_optimizer(tmp_path, 0)
        assert_same_optimizer_state(read, saved)
    fresh = loop.build_optimizer(model, args, torch.device("cpu"))  # the same parameters, no state yet
    fresh.load_state_dict(read)
    assert_same_optimizer_state(fresh.state_dict(), numbered)
    assert_same_optimizer_state(checkpoint._keyed_by_name(model, optimizer, numbered), named)


def assert_same_optimizer_state(actual: dict, expected: dict) -> None:
    assert list(actual["state"]) == list(expected["state"])
    for param, entry in expected["state"].items():
        assert sorted(actual["state"][param]) == sorted(entry), param
        for name, tensor in entry.items():
            assert torch.equal(actual["state"][param][name], tensor), (param, name)
    assert json.loads(json.dumps(actual["param_groups"])) == json.loads(json.dumps(expected["param_groups"]))
